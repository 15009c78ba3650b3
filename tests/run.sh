#!/usr/bin/env bash
# Runs lockd's whole test suite on a fresh Debian machine, installing what it
# needs first: the Rust tests (unit, doc and end-to-end against a real
# redis-server that the tests start themselves), the Go, Java and Python
# examples against a live daemon, and the offline check of deploy/.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# redis-server for the tests; protoc for etcd-client's build script (the
# benchmark crate is part of the workspace).
if ! command -v redis-server >/dev/null || ! command -v protoc >/dev/null; then
  echo "== installing redis-server and protobuf-compiler"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server protobuf-compiler >/dev/null
fi
echo "== installing what the examples need (Go, Java, Python gRPC)"
as_root bash examples/install-deps.sh

echo "== building"
cargo build --workspace --all-targets

echo "== examples in Go, Java and Python against a live daemon on a real Redis"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(port)
lockd_port=$(port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
redis_pid=$!
cleanup() { kill "${lockd_pid:-}" "$redis_pid" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
RUST_LOG=warn target/debug/lockd --listen "127.0.0.1:$lockd_port" --redis-url "redis://127.0.0.1:$redis_port" &
lockd_pid=$!
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$lockd_port") 2>/dev/null && break; sleep 0.1; done
bash examples/run-all.sh "127.0.0.1:$lockd_port"
cleanup
trap - EXIT

echo "== deploy/: manifests, dashboard"
bash deploy/validate.sh

echo "== cargo test"
log=$(mktemp)
cargo test --workspace 2>&1 | tee "$log"
# One closing line for the whole run: cargo's own last line is often a crate
# with no doc tests ("0 passed").
awk '/^test result:/ { p += $4; f += $6 } END { printf "cargo test: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
