#!/usr/bin/env bash
# Sets everything up and runs Blindsight. At this stage: an end-to-end CKKS demonstration on the
# ResNet parameter set (keys, encryption, homomorphic multiply, rotations, decryption), then the
# plaintext classifier on an image if one is given:  scripts/run.sh [IMAGE]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo run --release -q -p blindsight-core --example demo
if [ $# -gt 0 ]; then
  cargo run --release -q -p blindsight-server --bin blindsight -- classify --plaintext "$1"
fi
