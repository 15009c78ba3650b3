#!/usr/bin/env bash
# Installs what the Go, Java and Python examples need: Debian's Go and Java gRPC
# packages and protoc, and grpcio/grpcio-tools from PyPI. Run as root; safe to
# run again (it skips what is already installed). Non-interactive.
set -euo pipefail

apt_packages=(
  # protoc and google/protobuf/*.proto in /usr/include
  protobuf-compiler
  # Go, GOPATH mode: the stubs need the golang/protobuf 1.5 shim at run time
  golang-go golang-google-grpc-dev golang-google-protobuf-dev
  golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc
  # Java: javac, grpc-java 1.41, its protoc plugin and its run-time jars
  default-jdk-headless libgrpc-java protobuf-compiler-grpc-java-plugin libprotobuf-java
  libguava-java libgoogle-gson-java libperfmark-java libnetty-java libjsr305-java
  liberror-prone-java libanimal-sniffer-java libgeronimo-annotation-1.3-spec-java
)
pip_packages=(grpcio grpcio-tools)

missing=()
for p in "${apt_packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${missing[@]}"
else
  echo "install-deps: Debian packages already installed"
fi

python=${PYTHON:-python3}
if "$python" -c 'import grpc, grpc_tools.protoc' 2>/dev/null; then
  echo "install-deps: grpcio and grpcio-tools already installed for $python"
else
  pip_args=(--disable-pip-version-check --no-input --root-user-action=ignore)
  # A Debian-managed interpreter refuses pip installs unless told otherwise.
  stdlib=$("$python" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
  if [ -f "$stdlib/EXTERNALLY-MANAGED" ]; then
    pip_args+=(--break-system-packages)
  fi
  echo "install-deps: $python -m pip install ${pip_packages[*]}"
  "$python" -m pip install "${pip_args[@]}" "${pip_packages[@]}"
fi
