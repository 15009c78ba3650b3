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
if ! command -v redis-server >/dev/null || ! command -v protoc >/dev/null || ! command -v faketime >/dev/null; then
  echo "== installing redis-server and protobuf-compiler"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server protobuf-compiler faketime >/dev/null
fi
echo "== installing what the examples need (Go, Java, Python gRPC)"
as_root bash examples/install-deps.sh

echo "== building"
cargo build --workspace --all-targets

echo "== examples in Go, Java and Python against a live daemon on a real Redis"
# lockd-testkit starts redis-server and lockd on free ports, prints lockd's
# address, and stops both once its stdin closes: below, or when this script
# exits for any reason.
coproc testkit { target/debug/lockd-testkit lockd-on-redis target/debug/lockd; }
read -r lockd_endpoint <&"${testkit[0]}"
bash examples/run-all.sh "$lockd_endpoint"
testkit_stdin=${testkit[1]}
exec {testkit_stdin}>&-
wait "$testkit_PID"

echo "== deploy/: manifests, dashboard"
bash deploy/validate.sh

echo "== cargo test"
log=$(mktemp)
cargo test --workspace 2>&1 | tee "$log"
# One closing line for the whole run: cargo's own last line is often a crate
# with no doc tests ("0 passed").
awk '/^test result:/ { p += $4; f += $6 } END { printf "cargo test: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"

echo "== lockd-chaos --quick: faults injected under load, the history checked"
target/debug/lockd-chaos --quick --lockd target/debug/lockd --json target/chaos-quick.json
