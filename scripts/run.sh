#!/usr/bin/env bash
# Sets everything up and starts Blindsight: scripts/run.sh [serve options]
# Installs what is missing (wasm32 target, wasm-bindgen-cli at the lockfile's version), builds the
# browser client (web/pkg) and the server, and starts `blindsight serve` on the embedded default
# model, which prints the URL to open. Options go to `blindsight serve` (for example
# `--addr 127.0.0.1:9000`, `--data-dir DIR`, `--jobs 2`); `blindsight serve --help` lists them.
# Without a browser: target/release/blindsight classify IMAGE (everything in one process) or
# classify --server URL IMAGE (keys and encryption here, the network on a running server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build-web.sh
cargo build --release -q -p blindsight-server --bin blindsight
exec target/release/blindsight serve "$@"
