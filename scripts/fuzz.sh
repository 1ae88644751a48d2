#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser that sees untrusted bytes (fuzz/README.md).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (defaults: 60 s, every target)
#
# Builds the libFuzzer targets with cargo-fuzz without a sanitizer (`-s none`: builds on stable;
# release with debug assertions and overflow checks), then runs the targets one after another,
# each for SECONDS_PER_TARGET on one process, seeded with a scratch copy of its committed corpus
# (fuzz/corpus/<target>/, which the run does not grow). Prints executions and exec/s per target.
# A crash, timeout or out-of-memory input is copied to fuzz/regressions/<target>/ (which
# `cargo test -p blindsight-fuzz` replays) and the script exits non-zero.
#
# Environment: FUZZ_TOOLCHAIN (default: stable, enough without a sanitizer), CARGO_TARGET_DIR
# (default: target/), FUZZ_ARGS (more libFuzzer flags, e.g. `-timeout=60`), FUZZ_KEEP=1 keeps the scratch
# directory (the corpus each run grew, the logs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

secs=${1:-60}
shift || true
case $secs in
'' | *[!0-9]*)
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
  ;;
esac
all=()
for f in fuzz/fuzz_targets/*.rs; do
  all+=("$(basename "$f" .rs)")
done
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=("${all[@]}")
fi
for t in "${targets[@]}"; do
  if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
    echo "unknown target $t (targets: ${all[*]})" >&2
    exit 2
  fi
done

toolchain=${FUZZ_TOOLCHAIN:-stable}
triple=$(rustc +"$toolchain" -vV | sed -n 's/^host: //p')
target_dir=${CARGO_TARGET_DIR:-$root/target}
echo "== building ${#targets[@]} fuzz target(s) with cargo +$toolchain fuzz build -s none"
if [ ${#targets[@]} -eq ${#all[@]} ]; then
  cargo +"$toolchain" fuzz build -s none --features libfuzzer --target "$triple" \
    --target-dir "$target_dir"
else
  for t in "${targets[@]}"; do
    cargo +"$toolchain" fuzz build -s none --features libfuzzer --target "$triple" \
      --target-dir "$target_dir" "$t"
  done
fi
bin_dir=$target_dir/$triple/release

scratch=$(mktemp -d "${TMPDIR:-/tmp}/blindsight-fuzz.XXXXXX")
if [ "${FUZZ_KEEP:-0}" != 1 ]; then
  trap 'rm -rf "$scratch"' EXIT
fi

failed=0
summary=()
for t in "${targets[@]}"; do
  work=$scratch/$t
  mkdir -p "$work/corpus" "$work/artifacts"
  cp fuzz/corpus/"$t"/* "$work/corpus/"
  # the longest input libFuzzer makes: the largest seed, at least 4 KiB
  max_len=$(find "fuzz/corpus/$t" -type f -printf '%s\n' | sort -n | tail -1)
  max_len=$((max_len > 4096 ? max_len : 4096))
  dict=()
  if [ -f "fuzz/dict/$t.dict" ]; then
    dict=("-dict=$root/fuzz/dict/$t.dict")
  fi
  echo "== $t: ${secs}s, max_len $max_len"
  set +e
  # shellcheck disable=SC2086
  (cd "$work" && "$bin_dir/$t" -max_total_time="$secs" -max_len="$max_len" -timeout=30 \
    -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$work/artifacts/" \
    "${dict[@]}" ${FUZZ_ARGS:-} corpus) >"$work/log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$work/log" | tail -1 | cut -d' ' -f2)
  units=$(find "$work/corpus" -type f | wc -l)
  found=()
  for f in "$work"/artifacts/crash-* "$work"/artifacts/timeout-* "$work"/artifacts/oom-*; do
    [ -f "$f" ] || continue
    mkdir -p "fuzz/regressions/$t"
    cp "$f" "fuzz/regressions/$t/"
    found+=("fuzz/regressions/$t/$(basename "$f")")
  done
  slow=$(find "$work/artifacts" -name 'slow-unit-*' | wc -l)
  line=$(printf '%-20s %12s execs %8s exec/s %6ss  cov %6s  corpus %5s  slow %s' \
    "$t" "${execs:-?}" "${rate:-?}" "$secs" "${cov:-?}" "$units" "$slow")
  if [ $rc -ne 0 ] || [ ${#found[@]} -gt 0 ]; then
    failed=1
    line="$line  FAILED (exit $rc): ${found[*]:-no input saved}"
    tail -40 "$work/log" >&2
  fi
  echo "$line"
  summary+=("$line")
done

echo
echo "== summary ($toolchain, -s none, ${secs}s per target)"
printf '%s\n' "${summary[@]}"
if [ "${FUZZ_KEEP:-0}" = 1 ]; then
  echo "scratch kept: $scratch"
fi
if [ $failed -ne 0 ]; then
  echo "crashes were saved under fuzz/regressions/: fix them, then cargo test -p blindsight-fuzz" >&2
  exit 1
fi
