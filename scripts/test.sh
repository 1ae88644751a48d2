#!/usr/bin/env bash
# The test command: formatting, lints, the native test suite, the wasm32 builds and their tests in
# node, and the page's end-to-end tests in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -q -- -D warnings
echo "== the server builds without any secret-key code"
# The serving code (and everything it uses) must compile with the client half switched off: then
# it cannot name a secret key or decrypt. `cargo tree` shows the feature really is off there.
cargo check -q -p blindsight-server --lib --no-default-features
if cargo tree -q -p blindsight-server --no-default-features -e features -i blindsight-core | grep -q 'secret-key'; then
  echo "error: blindsight-server without its client feature still enables blindsight-core/secret-key" >&2
  exit 1
fi
echo "== native tests"
cargo test --workspace
echo "== the whole encrypted ResNet-20, in one process and through HTTP (release build)"
cargo test --release -p blindsight-server --test resnet20_encrypted --test api_resnet20 -- --include-ignored
echo "== wasm32 build and tests (node)"
cargo build -p blindsight-core --target wasm32-unknown-unknown --release
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p blindsight-core --target wasm32-unknown-unknown --test wasm
echo "== wasm-client: the page's build and its tests in node"
bash scripts/build-web.sh
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p blindsight-wasm-client --target wasm32-unknown-unknown --test node
echo "== what the wasm client made, evaluated and decrypted natively"
cargo test -p blindsight-server --test wasm_roundtrip -- --include-ignored
echo "== the page in headless Chromium against a real server (e2e/)"
cargo build --release -q -p blindsight-server --bin blindsight
bash e2e/run.sh
