#!/usr/bin/env bash
# Make `h2load` available for the benchmark's headline ceiling (bench/h2load_run.py).
#
# Idempotent and quiet: does nothing when h2load is on PATH; otherwise installs Debian's
# `nghttp2-client` package (which ships it) with apt-get. Never fails the caller: when installation
# is impossible (not root, no apt-get, no network) it prints one line saying why and exits 0, and the
# benchmark skips its h2load figures with that reason.
set -u

if command -v h2load >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_h2load: apt-get not available; install the Debian package 'nghttp2-client' by hand"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure_h2load: not root; run 'apt-get install nghttp2-client' as root"
    exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends nghttp2-client >"$log" 2>&1; then
    apt-get update -qq >>"$log" 2>&1
    apt-get install -y -qq --no-install-recommends nghttp2-client >>"$log" 2>&1
fi

if command -v h2load >/dev/null 2>&1; then
    exit 0
fi
echo "ensure_h2load: could not install the Debian package 'nghttp2-client': $(tail -n 1 "$log")"
exit 0
