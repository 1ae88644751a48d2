#!/usr/bin/env bash
# Builds the browser client: wasm-client/ for wasm32 (release), then wasm-bindgen (the CLI at the
# version Cargo.lock pins; setup.sh installs it) into web/pkg as an ES module for `--target web`
# (the page and its workers `import init, { WasmClient } from './pkg/blindsight_wasm_client.js'`).
# web/pkg is generated and git-ignored. Idempotent: reruns rebuild only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

WB_VERSION=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)
if [ "$(wasm-bindgen --version | awk '{print $2}')" != "$WB_VERSION" ]; then
  echo "build-web: wasm-bindgen $(wasm-bindgen --version) is not the $WB_VERSION Cargo.lock pins" >&2
  exit 1
fi

cargo build -q -p blindsight-wasm-client --lib --target wasm32-unknown-unknown --release
wasm-bindgen --target web --out-dir web/pkg \
  target/wasm32-unknown-unknown/release/blindsight_wasm_client.wasm

for f in web/pkg/blindsight_wasm_client_bg.wasm web/pkg/blindsight_wasm_client.js; do
  bytes=$(stat -c %s "$f")
  gz=$(gzip -9 -c "$f" | wc -c)
  printf 'build-web: %-40s %8d bytes (%d gzipped)\n' "$f" "$bytes" "$gz"
done
