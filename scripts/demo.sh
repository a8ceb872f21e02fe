#!/usr/bin/env bash
# make demo: sockbridge on port 12345 in front of a tiny echo program on
# ./run/echo.sock. In another terminal: nc localhost 12345, type, see it echoed.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p run
node dist/test/programs/echo.js run/echo.sock &
echo_pid=$!
trap 'kill "$echo_pid" 2>/dev/null || true' EXIT
echo "demo: try 'nc localhost 12345' in another terminal; Ctrl-C stops the demo" >&2
./bin/sockbridge --target run/echo.sock "$@"
