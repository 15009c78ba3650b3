#!/usr/bin/env bash
# Generates the Java stubs from proto/, compiles the example with plain javac
# against Debian's grpc-java jars and runs it against ADDR.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 HOST:PORT" >&2
  exit 2
fi
addr=$1
here=$(cd "$(dirname "$0")" && pwd)
proto=$(cd "$here/../../proto" && pwd)
build=$here/build
jars=/usr/share/java

rm -rf "$build"
mkdir -p "$build/gen" "$build/classes"

protoc -I "$proto" -I /usr/include \
  --plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin \
  --java_out="$build/gen" --grpc-java_out="$build/gen" \
  "$proto/lockd/v1/lock.proto"

# grpc-java 1.41 and what it needs at run time, from Debian's packages
# (geronimo-annotation provides the javax.annotation.Generated the stubs carry).
cp=""
for jar in \
  grpc-api grpc-context grpc-core grpc-netty grpc-protobuf grpc-protobuf-lite grpc-stub \
  protobuf guava gson perfmark-api jsr305 error_prone_annotations animal-sniffer-annotations \
  geronimo-annotation-1.3-spec \
  netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-codec-socks netty-common \
  netty-handler netty-handler-proxy netty-resolver netty-transport \
  netty-transport-native-unix-common; do
  if [ ! -f "$jars/$jar.jar" ]; then
    echo "missing $jars/$jar.jar: run examples/install-deps.sh" >&2
    exit 1
  fi
  cp="$cp${cp:+:}$jars/$jar.jar"
done

find "$build/gen" "$here/src" -name '*.java' > "$build/sources.txt"
javac -nowarn -encoding UTF-8 -d "$build/classes" -cp "$cp" @"$build/sources.txt"

java -cp "$build/classes:$cp" io.lockd.example.LockdExample "$addr"
