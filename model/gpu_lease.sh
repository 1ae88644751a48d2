#!/usr/bin/env bash
# The training runs of one short GPU lease, side by side on one GPU (a CIFAR ResNet-20 leaves most of
# an H200 idle, so several runs share it). Every run follows a wall-clock one-cycle schedule
# (train.py --time-budget) that ends at the same deadline, whatever speed the shared GPU gives it:
#   t64  ReLU ResNet-20 of width 64 (4.3M parameters), the teacher; ends early so students can use it
#   q20  quadratic ResNet-20 from scratch (PAPER's recipe with Cutout 12 and label smoothing 0.1)
#   r20  ReLU ResNet-20, the same recipe: what the quadratic activation costs
#   kd9  quadratic ResNet-20 from resnet20q9, distilled from t64
#   kds  quadratic ResNet-20 from scratch, distilled from t64
# Usage, from the repository root, with the JPEG archive copied to .gpu/ (device tool: carry .gpu):
#   OUT=/tmp/out BUDGET=500 TEACHER_BUDGET=200 bash model/gpu_lease.sh
# It leaves $OUT/runs.tgz (logs, checkpoints), $OUT/t64-bf16.pt (the teacher) and $OUT/console.txt.
set -u
OUT=${OUT:-/tmp/gpu-lease}
DEVICE=${DEVICE:-cuda}
R=/tmp/runs
D=/tmp/cifar10
start=$(date +%s)
END=$((start + ${BUDGET:-500}))
TEACHER_END=$((start + ${TEACHER_BUDGET:-200}))
PY=${PY:-python3}
SLACK=${SLACK:-60}  # seconds a run may take past its deadline (the last evaluation) before it is killed
mkdir -p "$OUT" "$R"
exec > >(tee -a "$OUT/console.txt") 2>&1
export PYTHONPATH=model PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
$PY model/jpeg_archive.py .gpu/cifar10-jpeg75.tar.gz $D || exit 1

common=(--data $D --device "$DEVICE" --bf16 --channels-last --threads 2 --eval-every 5)

# run NAME END ARGS...: torch.compile first; if that dies before its first checkpoint, eager
run() {
    local name=$1 end=$2
    shift 2
    if [ $((end - $(date +%s))) -lt 30 ]; then echo "$(date +%T) $name: no time left"; return; fi
    echo "$(date +%T) start $name"
    timeout $((end - $(date +%s) + SLACK)) $PY model/train.py "${common[@]}" --compile --out $R/$name \
        --time-budget $((end - $(date +%s))) "$@" > $R/$name.log 2>&1
    local rc=$?
    if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ ! -f $R/$name/last.pt ] && [ $((end - $(date +%s))) -gt 60 ]; then
        echo "$(date +%T) $name: compiled run failed, eager:"; tail -5 $R/$name.log
        rm -rf $R/$name
        timeout $((end - $(date +%s) + SLACK)) $PY model/train.py "${common[@]}" --out $R/$name \
            --time-budget $((end - $(date +%s))) "$@" >> $R/$name.log 2>&1
    fi
    echo "$(date +%T) end $name: $(tail -1 $R/$name/log.jsonl 2>/dev/null)"
}

students() {
    run t64 $TEACHER_END --activation relu --width 64 --lr 0.1 --cutout 16 --seed 64
    if [ ! -f $R/t64/last.pt ]; then echo "no teacher"; return; fi
    local pids=()
    run kd9 $END --init-from model/checkpoints/resnet20q9-last.pt --teacher $R/t64/last.pt --kd-weight 0.9 \
        --lr 0.05 --cutout 12 --ramp-epochs 0 --seed 90 &
    pids+=($!)
    run kds $END --teacher $R/t64/last.pt --kd-weight 0.9 --lr 0.1 --cutout 12 --seed 91 &
    pids+=($!)
    wait "${pids[@]}"
}

# explicit pids: a bare `wait` would also wait for the tee above, which never ends
pids=()
students &
pids+=($!)
run q20 $END --lr 0.1 --cutout 12 --label-smoothing 0.1 --seed 20 &
pids+=($!)
run r20 $END --activation relu --lr 0.1 --cutout 12 --label-smoothing 0.1 --seed 21 &
pids+=($!)
wait "${pids[@]}"

# what comes back is limited to 16 MiB a file: checkpoints without their optimizer state (these
# runs are not resumed), and the teacher's weights in bf16 beside the archive (8.6 MB)
$PY -c "
import glob, torch
for p in glob.glob('$R/*/*.pt'):
    s = torch.load(p, map_location='cpu', weights_only=False)
    s.pop('opt', None)
    if '/t64/' in p:
        s['model'] = {k: v.bfloat16() if v.is_floating_point() else v for k, v in s['model'].items()}
    torch.save(s, p)"
[ -f $R/t64/last.pt ] && mv $R/t64/last.pt "$OUT/t64-bf16.pt"
rm -f $R/t64/best.pt
tar czf "$OUT/runs.tgz" -C /tmp runs
ls -la "$OUT"
echo "$(date +%T) done in $(( $(date +%s) - start )) s"
