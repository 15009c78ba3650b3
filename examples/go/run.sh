#!/usr/bin/env bash
# Generates the Go stubs from proto/, builds the example and runs it against ADDR.
# Uses Debian's Go packages in GOPATH mode, offline (see README.md).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 HOST:PORT" >&2
  exit 2
fi
addr=$1
here=$(cd "$(dirname "$0")" && pwd)
proto=$(cd "$here/../../proto" && pwd)
build=$here/build

# Stubs are made afresh each run; the Go build cache in $build/cache is kept.
rm -rf "$build/src" "$build/lockd-example"
mkdir -p "$build/src"

# paths=import (the default) lays the files out by go_package under $build/src,
# that is $build/src/github.com/lockd/lockd/gen/go/lockd/v1.
protoc -I "$proto" -I /usr/include \
  --go_out="$build/src" --go-grpc_out="$build/src" \
  "$proto/lockd/v1/lock.proto"

export GO111MODULE=off GOPROXY=off GOFLAGS= CGO_ENABLED=0
export GOPATH="$build:/usr/share/gocode"
export GOCACHE="$build/cache"
go build -o "$build/lockd-example" "$here/main.go"

"$build/lockd-example" "$addr"
