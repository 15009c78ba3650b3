#!/usr/bin/env bash
# Runs the Go, Java and Python examples one after another against a running
# lockd at ADDR; exits non-zero if any of them fails.
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 HOST:PORT" >&2
  exit 2
fi
addr=$1
here=$(cd "$(dirname "$0")" && pwd)

passed=0
failed=()
for lang in go java python; do
  echo "=== examples/$lang ==="
  if timeout 600 bash "$here/$lang/run.sh" "$addr"; then
    passed=$((passed + 1))
  else
    echo "=== examples/$lang FAILED (exit $?) ===" >&2
    failed+=("$lang")
  fi
done

echo "examples: $passed passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
