#!/usr/bin/env bash
# The test command: formatting, lints, the native test suite, and the wasm32 build and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -q -- -D warnings
echo "== native tests"
cargo test --workspace
echo "== wasm32 build and tests (node)"
cargo build -p blindsight-core --target wasm32-unknown-unknown --release
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p blindsight-core --target wasm32-unknown-unknown --test wasm
