#!/usr/bin/env python3
"""Train an HE-friendly CIFAR-10 ResNet (quadratic activations, range penalty).

Recipe (PAPER, arXiv 2509.22857): quadratic fit of ReLU on [-2, 2], inputs clamped to that range while
training, penalty weight 1e-3 on the part outside it, ramped up over the first epochs; SGD momentum 0.9,
weight decay 5e-4, batch 128, random crop (4-pixel padding) and horizontal flips. The learning rate
follows a one-cycle schedule over --epochs, computed from the global step so that --resume continues
the same schedule exactly.

    python model/train.py --epochs 40 --out model/runs/r20q        # fresh run
    python model/train.py --resume model/runs/r20q/last.pt         # continue it
"""

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from hemodel import CifarResNet, load_cifar_bin, model_from_checkpoint, normalize

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10")


def one_cycle_lr(step, total, peak, warm_frac=0.15):
    """`one_cycle_at` by step, the warm-up a whole number of steps (as runs to be resumed were made)."""
    warm = max(1, int(total * warm_frac))
    return one_cycle_at(step / total, peak, warm / total)


def one_cycle_at(frac, peak, warm_frac=0.15, start_div=10.0, final_div=1000.0):
    """Linear warm-up from peak/start_div to peak over the first `warm_frac` of the run, then cosine down
    to peak/final_div; `frac` is the fraction of the run done (of its steps, or of its time budget)."""
    if frac < warm_frac:
        return peak / start_div + (peak - peak / start_div) * frac / warm_frac
    t = min(1.0, (frac - warm_frac) / (1.0 - warm_frac))
    lo = peak / final_div
    return lo + (peak - lo) * 0.5 * (1 + math.cos(math.pi * t))


def augment(batch_u8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop of the 4-pixel zero-padded image, and a horizontal flip with probability 1/2.
    Runs wherever the batch lives (`gen` must live there too), without host synchronization."""
    n, dev = batch_u8.shape[0], batch_u8.device
    padded = F.pad(batch_u8, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=gen, device=dev)
    dx = torch.randint(0, 9, (n,), generator=gen, device=dev)
    ar = torch.arange(32, device=dev)
    rows = (dy[:, None] + ar[None, :])[:, None, :, None].expand(n, 3, 32, 40)
    cols = (dx[:, None] + ar[None, :])[:, None, None, :].expand(n, 3, 32, 32)
    out = padded.gather(2, rows)  # rows first, then columns: two small gathers
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=gen, device=dev) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def cutout(batch: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """DeVries & Taylor's Cutout: zero one size x size square (clipped at the border) of each normalized
    image, at a uniformly random centre; a regularizer that pays off over long schedules."""
    if size <= 0:
        return batch
    (n, _, h, w), dev = batch.shape, batch.device
    cy = torch.randint(0, h, (n, 1, 1), generator=gen, device=dev)
    cx = torch.randint(0, w, (n, 1, 1), generator=gen, device=dev)
    ys, xs = torch.arange(h, device=dev)[None, :, None], torch.arange(w, device=dev)[None, None, :]
    lo = size // 2
    hole = (ys >= cy - lo) & (ys < cy - lo + size) & (xs >= cx - lo) & (xs < cx - lo + size)
    return batch * (~hole)[:, None].to(batch.dtype)


@torch.no_grad()
def evaluate(model, x_u8, y, batch=500, track_max=False):
    """Top-1 accuracy of the model as the homomorphic evaluation computes it (no clamp), the
    largest activation input per layer (NaN if any was NaN) and the fraction of images whose
    activation inputs all stay within the clip range."""
    model.eval()
    acts = model.activations()
    correct, in_range = 0, 0
    maxes = [float("-inf")] * len(acts)
    for i in range(0, len(y), batch):
        for a in acts:
            a.track_max, a.max_abs, a.in_range = track_max, None, None
        logits = model(normalize(x_u8[i:i + batch]))
        correct += (logits.argmax(1) == y[i:i + batch]).sum().item()
        if track_max:
            for k, a in enumerate(acts):
                m = float(a.max_abs)
                maxes[k] = float("nan") if math.isnan(m) or math.isnan(maxes[k]) else max(maxes[k], m)
            flags = [a.in_range for a in acts if getattr(a, "in_range", None) is not None]
            if flags:
                in_range += torch.stack(flags).all(0).sum().item()
    for a in acts:
        a.track_max = False
    return correct / len(y), (maxes if track_max else None), in_range / len(y)


def largest(maxes):
    """The largest of the per-layer activation maxima, NaN if any layer saw a NaN."""
    return float("nan") if any(math.isnan(m) for m in maxes) else max(maxes)


def load_teacher(paths, fmt, temp, device="cpu", flip=False, compile_=False):
    """Trained networks, frozen in evaluation mode, whose softened outputs the student learns to
    match. Several make an ensemble: the mean of their probabilities at temperature `temp` (an
    ensemble of two of our quadratic networks is about a point more accurate than either). With
    `flip` each also sees the mirrored batch (test-time augmentation: resnet20q11 + the GPU ReLU
    run go from 90.69% to 91.05% on jpeg75, for twice the teacher work). `compile_` fuses their kernels
    (default mode, no CUDA graphs: several calls per step would overwrite each other's outputs)."""
    if isinstance(paths, str):  # runs saved before --teacher took several checkpoints
        paths = [paths]
    nets = [model_from_checkpoint(torch.load(p, map_location="cpu", weights_only=False))
            .to(device, memory_format=fmt) for p in paths]
    if compile_:
        nets = [torch.compile(net) for net in nets]

    def log_probs(x):
        with torch.no_grad():
            views = [x, x.flip(3).contiguous(memory_format=fmt)] if flip else [x]
            lp = torch.stack([F.log_softmax(net(v).float() / temp, dim=1) for net in nets for v in views])
            return torch.logsumexp(lp, dim=0) - math.log(len(lp))

    return log_probs


def swa_lr(epochs_done, peak):
    """Stochastic weight averaging's schedule: a one-epoch linear warm-up from peak/10, then constant."""
    return peak * min(1.0, 0.1 + 0.9 * epochs_done)


@torch.no_grad()
def recompute_bn(model, x_u8, gen, cutout_size, images=10000, batch=500):
    """BatchNorm statistics of an averaged network, recomputed (as a cumulative mean) on random
    training images: the averaged weights' activations have their own statistics, and the running
    means of the snapshots do not describe them. The batches are augmented and the activations clamp
    as in training, where the network learnt to use its statistics: measured on resnet20q11,
    un-augmented images cost 4.5 points, and unclamped ones, where one stray image can inflate a
    batch's variance and with it every later layer's, leave 9%."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    model.train()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    idx = torch.randperm(len(x_u8), generator=gen, device=x_u8.device)[:images]
    for i in range(0, len(idx), batch):
        model(cutout(normalize(augment(x_u8[idx[i:i + batch]], gen)), cutout_size, gen))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.eval()


def distillation(student_logits, teacher_log_probs, temp):
    """Hinton et al.'s soft-target loss, KL(teacher || student) at temperature `temp` (the teacher's
    log-probabilities already softened at it), times temp^2 so that its gradients keep their scale
    as the temperature changes."""
    s = F.log_softmax(student_logits.float() / temp, dim=1)
    return F.kl_div(s, teacher_log_probs, log_target=True, reduction="batchmean") * temp * temp


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--out", default="model/runs/resnet20q")
    ap.add_argument("--resume", help="checkpoint to continue (its arguments are reused)")
    ap.add_argument("--init-from", help="checkpoint whose weights start a new run (fresh optimizer and schedule: "
                                         "fine-tuning a finished run)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--clip", type=float, default=2.0)
    ap.add_argument("--penalty", type=float, default=1e-3)
    ap.add_argument("--ramp-epochs", type=float, default=5.0, help="epochs over which the penalty ramps up")
    ap.add_argument("--activation", choices=["quadratic", "relu"], default="quadratic")
    ap.add_argument("--n", type=int, default=3, help="blocks per stage: 3 = ResNet-20, 5 = ResNet-32")
    ap.add_argument("--width", type=int, default=16,
                    help="channels of the first stage (16: the ResNet of the paper; 64: a wide teacher)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: data, augmentation and model on the GPU")
    ap.add_argument("--time-budget", type=float, default=0.0,
                    help="seconds from start: the one-cycle schedule follows wall-clock time instead of "
                         "--epochs and the run stops when the time is up (a GPU lease of fixed length)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for the training forward pass (CPU: ~1.5x)")
    ap.add_argument("--best-max-act", type=float, default=100.0,
                    help="best.pt only among epochs whose largest unclamped activation input is below this "
                         "(a model that blows up on some image cannot be evaluated homomorphically)")
    ap.add_argument("--no-clamp-from", type=int, default=0,
                    help="from this epoch (1-based) on, train the exact unclamped function the encrypted "
                         "evaluation computes (0: clamp throughout)")
    ap.add_argument("--teacher", nargs="+",
                    help="checkpoints of trained networks (e.g. the ReLU baseline, or an ensemble of earlier runs) "
                         "to distil from: the loss mixes cross-entropy with the KL divergence to their averaged "
                         "softened outputs")
    ap.add_argument("--teacher-flip", action="store_true",
                    help="the teachers also see the mirrored batch and their probabilities are averaged over both")
    ap.add_argument("--kd-weight", type=float, default=0.7, help="weight of the distillation term (with --teacher)")
    ap.add_argument("--kd-temp", type=float, default=4.0, help="softmax temperature of the distillation term")
    ap.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    ap.add_argument("--cutout", type=int, default=0, help="side of the Cutout square in pixels (0: none; 16 is usual)")
    ap.add_argument("--channels-last", action="store_true", help="NHWC tensors (oneDNN on CPU: ~10%% faster)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the training forward pass (CPU: ~15%% faster after a minute of compiling)")
    ap.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead"],
                    help="torch.compile mode; reduce-overhead replays forward and backward as CUDA graphs, for a "
                         "GPU where kernel launches, not arithmetic, set the step time")
    ap.add_argument("--eval-every", type=int, default=1,
                    help="evaluate (and checkpoint) every this many epochs, and after the last one")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (smoke tests)")
    ap.add_argument("--swa-start", type=int, default=0,
                    help="stochastic weight averaging (Izmailov et al. 2018): the rate warms up over the first "
                         "epoch to --lr and stays there; from this epoch (1-based) on the weights are averaged "
                         "--swa-per-epoch times an epoch, and swa.pt holds the average with its BatchNorm "
                         "statistics recomputed (0: off, one-cycle schedule)")
    ap.add_argument("--swa-per-epoch", type=int, default=4,
                    help="weight snapshots averaged per epoch (with --swa-start)")
    args = ap.parse_args()
    started = time.time()
    if args.time_budget < 0:
        ap.error("--time-budget must be positive (0: schedule by --epochs)")

    state = None
    if args.resume:
        state = torch.load(args.resume, map_location="cpu", weights_only=False)
        saved = state["args"]
        saved["resume"], saved["max_steps"] = args.resume, args.max_steps
        # schedule-independent knobs may change on resume when given explicitly
        if args.no_clamp_from:
            saved["no_clamp_from"] = args.no_clamp_from
        saved.setdefault("no_clamp_from", 0)
        if args.penalty != ap.get_default("penalty"):
            saved["penalty"] = args.penalty
        saved["best_max_act"] = args.best_max_act
        # a constant-rate (SWA) run can be extended into a new folder; a one-cycle schedule cannot
        if saved.get("swa_start"):
            for k in ("time_budget", "out"):
                if getattr(args, k) != ap.get_default(k):
                    saved[k] = getattr(args, k)
        if args.threads:
            saved["threads"] = args.threads
        for k, v in vars(ap.parse_args([])).items():  # flags newer than the run take their defaults
            saved.setdefault(k, v)
        for k in ("channels_last", "compile", "compile_mode", "device"):  # how to run, not what to train
            saved[k] = getattr(args, k)
        args = argparse.Namespace(**saved)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    xs, ys = zip(*(load_cifar_bin(os.path.join(args.data, "jpeg75", f"data_batch_{i}.bin")) for i in range(1, 6)))
    dev = torch.device(args.device)
    x_train, y_train = torch.from_numpy(np.concatenate(xs)).to(dev), torch.from_numpy(np.concatenate(ys)).to(dev)
    x_test, y_test = (torch.from_numpy(a).to(dev)
                      for a in load_cifar_bin(os.path.join(args.data, "jpeg75", "test_batch.bin")))

    model = CifarResNet(n=args.n, width=args.width, clip=args.clip, activation=args.activation)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=fmt)
    decay = [p for n_, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n_, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=args.lr, momentum=args.momentum, nesterov=True, fused=dev.type == "cuda")
    # the compiled module shares the parameters; checkpoints and evaluation use `model` itself
    train_fwd = torch.compile(model, mode=args.compile_mode) if args.compile else model
    steps_per_epoch = len(y_train) // args.batch
    total = steps_per_epoch * args.epochs
    start_epoch, log, best = 0, [], 0.0
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])  # moves the momentum buffers to the parameters' device
        start_epoch, log = state["epoch"], state["log"]
        # recomputed under the current criterion (older runs kept exploding epochs as best)
        best = max((r["test_acc_jpeg75"] for r in log if "test_acc_jpeg75" in r
                    and r["max_act_input"] == r["max_act_input"] and r["max_act_input"] < args.best_max_act),
                   default=0.0)
        try:
            gen.set_state(state["gen"])
        except RuntimeError:  # saved on another device: the augmentation stream starts afresh
            pass
    elif args.init_from:
        model.load_state_dict(torch.load(args.init_from, map_location="cpu", weights_only=False)["model"])

    # weight averaging: `swa` holds a copy of the network beside it, updated from `model` between steps
    swa = AveragedModel(model) if args.swa_start else None
    if swa is not None and state and "swa" in state:
        swa.load_state_dict(state["swa"])
    swa_every = max(1, steps_per_epoch // max(1, args.swa_per_epoch))

    teacher = load_teacher(args.teacher, fmt, args.kd_temp, dev, args.teacher_flip,
                           compile_=args.compile and dev.type == "cuda") if args.teacher else None

    def record(rec):
        log.append(rec)
        print(json.dumps(rec), flush=True)
        with open(os.path.join(args.out, "log.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")

    step = start_epoch * steps_per_epoch
    budgeted = args.time_budget > 0
    deadline = started + args.time_budget
    clock = None  # budgeted: when the schedule's clock started (after the first, compiling, step)
    out_of_time = False
    for epoch in range(start_epoch, 10 ** 9 if budgeted else args.epochs):
        model.train()
        perm = torch.randperm(len(y_train), generator=gen, device=dev)
        t0, seen = time.time(), 0
        # running sums stay on the device: reading them every step would stall the GPU queue
        tot_loss, tot_pen, correct = (torch.zeros((), device=dev) for _ in range(3))
        ramp = min(1.0, (epoch + 1) / args.ramp_epochs) if args.ramp_epochs > 0 else 1.0
        unclamped = bool(args.no_clamp_from) and epoch + 1 >= args.no_clamp_from
        for a in model.activations():
            a.clamp_in_training = not unclamped
        skipped = 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{'?' if budgeted else args.epochs}",
                   leave=False, disable=dev.type != "cpu")
        for i in bar:
            idx = perm[i * args.batch:(i + 1) * args.batch]
            xb = cutout(normalize(augment(x_train[idx], gen)), args.cutout, gen)
            xb, yb = xb.contiguous(memory_format=fmt), y_train[idx]
            if budgeted:
                now = time.time()
                if clock is None and step > start_epoch * steps_per_epoch:
                    clock = now
                frac = 0.0 if clock is None else (now - clock) / max(deadline - clock, 1e-9)
                if frac >= 1.0:
                    out_of_time = True
                    break
            if swa is not None:
                lr = swa_lr(step / steps_per_epoch, args.lr)
            elif budgeted:
                lr = one_cycle_at(frac, args.lr)
            else:
                lr = one_cycle_lr(step, total, args.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
                logits = train_fwd(xb)
                ce = F.cross_entropy(logits.float(), yb, label_smoothing=args.label_smoothing)
                fit = ce
                if teacher is not None:
                    fit = (1 - args.kd_weight) * ce + args.kd_weight * distillation(logits, teacher(xb), args.kd_temp)
                pen = model.range_penalty().float()
            loss = fit + args.penalty * ramp * pen
            opt.zero_grad(set_to_none=True)
            if unclamped and not torch.isfinite(loss):
                # unclamped, a batch can overflow: skip it rather than poison the weights
                skipped += 1
                step += 1
                continue
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            if swa is not None and epoch + 1 >= args.swa_start and (i + 1) % swa_every == 0:
                swa.update_parameters(model)
            tot_loss += ce.detach() * len(yb)
            tot_pen += pen.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)
            if dev.type == "cpu":
                bar.set_postfix(loss=f"{tot_loss.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
            if args.max_steps and step >= args.max_steps:
                break
        tot_loss, tot_pen, correct = tot_loss.item(), tot_pen.item(), correct.item()
        last = out_of_time or (args.max_steps and step >= args.max_steps) or (not budgeted and epoch + 1 == args.epochs)
        # the deadline can fall on an epoch's first step: then the epoch did not happen
        ran = bool(seen or skipped or not out_of_time)
        done = epoch + ran
        rec = {"epoch": done, "steps": step}
        if ran:
            rec.update({"train_loss": tot_loss / max(seen, 1), "train_acc": correct / max(seen, 1),
                        "penalty": tot_pen / max(seen, 1), "clamped": not unclamped, "skipped_batches": skipped,
                        "lr_end": opt.param_groups[0]["lr"], "seconds": time.time() - t0})
        if not last and (epoch + 1) % args.eval_every:
            record(rec)
            continue
        eval_batch = 500 if dev.type == "cpu" else 2500
        test_acc, maxes, in_range = evaluate(model, x_test, y_test, batch=eval_batch, track_max=True)
        worst = largest(maxes)
        rec.update({"test_acc_jpeg75": test_acc, "max_act_input": worst, "test_in_range": in_range})
        if swa is not None and int(swa.n_averaged) > 0:
            recompute_bn(swa.module, x_train, gen, args.cutout)
            s_acc, s_maxes, s_in = evaluate(swa.module, x_test, y_test, batch=eval_batch, track_max=True)
            rec.update({"swa_snapshots": int(swa.n_averaged), "swa_test_acc_jpeg75": s_acc,
                        "swa_max_act_input": largest(s_maxes), "swa_test_in_range": s_in})
        record(rec)
        is_best = test_acc > best and worst < args.best_max_act
        best = test_acc if is_best else best
        if out_of_time:
            args.epochs = done  # what the record says was run (the last epoch partial)
        cpu = lambda d: {k: v.cpu() if torch.is_tensor(v) else v for k, v in d.items()}  # noqa: E731
        opt_state = opt.state_dict()
        opt_state["state"] = {k: cpu(v) for k, v in opt_state["state"].items()}
        ckpt = {"model": cpu(model.state_dict()), "opt": opt_state, "epoch": done, "log": log,
                "args": vars(args), "gen": gen.get_state(), "best": best}
        if swa is not None:
            ckpt["swa"] = cpu(swa.state_dict())
        torch.save(ckpt, os.path.join(args.out, "last.pt.tmp"))
        os.replace(os.path.join(args.out, "last.pt.tmp"), os.path.join(args.out, "last.pt"))
        if is_best:
            torch.save(ckpt, os.path.join(args.out, "best.pt"))
        if swa is not None and int(swa.n_averaged) > 0:
            # the averaged network alone, in the format evaluate.py and export.py read
            torch.save({"model": cpu(swa.module.state_dict()), "epoch": done, "log": log, "args": vars(args),
                        "swa_snapshots": int(swa.n_averaged)}, os.path.join(args.out, "swa.pt"))
        if last:
            break


if __name__ == "__main__":
    main()
