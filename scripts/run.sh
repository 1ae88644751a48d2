#!/usr/bin/env bash
# Sets everything up and runs Blindsight: scripts/run.sh [IMAGE]
# With an image (PNG or JPEG, any size): classifies it encrypted, in one process (keys, encryption,
# the homomorphic ResNet-20 on the embedded model, decryption), printing label, probabilities and
# timings. Without one: prints the evaluation plan and benchmarks one CIFAR-10 test image from
# ../shared/data (or, where that is absent, runs the CKKS demonstration).
# The browser page and the HTTP server arrive with the next milestones; this command will start them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -q -p blindsight-server --bin blindsight
bin=target/release/blindsight
if [ $# -gt 0 ]; then
  exec "$bin" classify "$1"
fi
"$bin" plan
if [ -f ../shared/data/cifar10/jpeg75/test_batch.bin ]; then
  exec "$bin" bench --images 1 --data ../shared/data/cifar10
fi
exec cargo run --release -q -p blindsight-core --example demo
