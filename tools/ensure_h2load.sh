#!/usr/bin/env bash
# Make `h2load` available for the benchmark's headline ceiling (bench/h2load_run.py): Debian's
# `nghttp2-client` ships it (tools/ensure_debian.sh: idempotent, never fails the caller).
exec bash "$(dirname "$0")/ensure_debian.sh" ensure_h2load nghttp2-client h2load
