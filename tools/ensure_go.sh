#!/usr/bin/env bash
# Make the Go toolchain and the protoc plugins for the Go client available (`make clients`, and the
# test that generates, builds and runs the Go and TypeScript clients against a running server).
#
# Everything comes from Debian's packages, since the Go module proxy is not reachable from these
# machines: golang-go (the compiler), protoc-gen-go and protoc-gen-go-grpc (the plugins), and the
# libraries the generated code imports, which Go finds in GOPATH mode under /usr/share/gocode.
# golang-github-golang-protobuf-1-5-dev replaces the 1.3 API that grpc's package pulls in: the
# generated messages implement the v2 API, which the 1.3 codec cannot unmarshal.
# golang-google-genproto-dev holds google.golang.org/genproto/googleapis/api/annotations, which the
# generated code imports for the google.api.field_behavior options (grpc's package depends on it too).
# Idempotent and quiet; never fails the caller (prints why when it cannot install).
set -u

packages="golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != "0" ]; then
    echo "ensure_go: cannot install$missing (needs apt-get as root)"
    exit 0
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
if ! apt-get install -y -q $missing >"$log" 2>&1; then
    apt-get update -q >>"$log" 2>&1
    # shellcheck disable=SC2086
    apt-get install -y -q $missing >>"$log" 2>&1 || { echo "ensure_go: apt-get install$missing failed:"; tail -5 "$log"; }
fi
exit 0
