#!/usr/bin/env bash
# Installs what the build and the tests need, where missing: the wasm32 target, and
# wasm-bindgen-cli at the version Cargo.lock pins (its test runner runs the wasm tests in node).
# Idempotent; sourced by run.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  echo "setup: adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

WB_VERSION=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)
if [ -n "$WB_VERSION" ] && ! (need wasm-bindgen && [ "$(wasm-bindgen --version | awk '{print $2}')" = "$WB_VERSION" ]); then
  echo "setup: installing wasm-bindgen-cli $WB_VERSION (about 8 minutes)"
  # --locked fails against this registry (a locked dependency version is missing); build unlocked.
  cargo install wasm-bindgen-cli --version "$WB_VERSION"
fi

if ! need node; then
  echo "setup: installing Node.js (wasm tests run in node)"
  apt-get update -qq && apt-get install -y -qq nodejs >/dev/null
fi
