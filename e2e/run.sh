#!/usr/bin/env bash
# The browser tests: headless Chromium (Debian's package, installed here if missing) driven by
# playwright-core (e2e/package-lock.json) against a real `blindsight serve` on a free port with a
# temporary data directory. Builds nothing: run
#   cargo build --release -p blindsight-server --bin blindsight && bash scripts/build-web.sh
# first. Screenshots land in e2e/artifacts/ (git-ignored).
#
#   bash e2e/run.sh                       # all tests
#   bash e2e/run.sh --test-name-pattern=secret   # arguments go to `node --test`
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/target/release/blindsight
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

fail() { echo "e2e: $*" >&2; exit 1; }

[ -x "$BIN" ] || fail "$BIN is missing: cargo build --release -p blindsight-server --bin blindsight"
"$BIN" serve --help >/dev/null 2>&1 || fail "$BIN has no 'serve' command: rebuild it (cargo build --release -p blindsight-server --bin blindsight)"
[ -f web/pkg/blindsight_wasm_client.js ] && [ -f web/pkg/blindsight_wasm_client_bg.wasm ] \
  || fail "web/pkg is missing: bash scripts/build-web.sh"
[ -f web/index.html ] || fail "web/index.html is missing"
[ -f ../shared/data/cifar10/jpeg75/test_batch.bin ] \
  || fail "../shared/data/cifar10/jpeg75/test_batch.bin is missing (the CIFAR-10 test batch)"
command -v node >/dev/null || fail "node is missing (Node.js 20 or newer)"

if [ ! -x "$CHROMIUM" ]; then
  echo "e2e: installing chromium (apt)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  [ -x "$CHROMIUM" ] || fail "chromium did not install at $CHROMIUM"
fi

(cd e2e && npm ci --no-audit --no-fund --loglevel=error)

free_port() { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }

DATA=$(mktemp -d -t blindsight-e2e.XXXXXX)
PORT=$(free_port)
LOG=$DATA/server.log
mkdir -p e2e/artifacts
"$BIN" serve --addr "127.0.0.1:$PORT" --data-dir "$DATA/data" --web "$ROOT/web" >"$LOG" 2>&1 &
SERVER=$!
cleanup() {
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  cp "$LOG" e2e/artifacts/server.log 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT

URL=http://127.0.0.1:$PORT
echo "e2e: starting blindsight serve at $URL (the plan takes a while)" >&2
for _ in $(seq 1 600); do
  if curl -fsS "$URL/api/health" >/dev/null 2>&1; then break; fi
  kill -0 "$SERVER" 2>/dev/null || { cat "$LOG" >&2; fail "the server exited"; }
  sleep 0.5
done
curl -fsS "$URL/api/health" >/dev/null || { cat "$LOG" >&2; fail "the server did not answer in 300 s"; }

export BLINDSIGHT_URL=$URL BLINDSIGHT_BIN=$BIN CHROMIUM
export CIFAR_BATCH=$ROOT/../shared/data/cifar10/jpeg75/test_batch.bin
export E2E_ARTIFACTS=$ROOT/e2e/artifacts
cd e2e
node --test --test-concurrency=1 "$@" tests/*.test.js
