#!/usr/bin/env bash
# Generates the Python stubs from proto/ with grpcio-tools and runs the example against ADDR.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 HOST:PORT" >&2
  exit 2
fi
addr=$1
here=$(cd "$(dirname "$0")" && pwd)
proto=$(cd "$here/../../proto" && pwd)
gen=$here/build/gen
python=${PYTHON:-python3}

rm -rf "$gen"
mkdir -p "$gen"

# grpcio-tools ships google/protobuf/*.proto; put them on the include path.
wkt=$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
"$python" -m grpc_tools.protoc -I "$proto" -I "$wkt" \
  --python_out="$gen" --grpc_python_out="$gen" \
  "$proto/lockd/v1/lock.proto"

PYTHONPATH="$gen${PYTHONPATH:+:$PYTHONPATH}" "$python" "$here/lockd_example.py" "$addr"
