#!/usr/bin/env bash
# Make `promtool` and `prometheus` available for the rule, dashboard and end-to-end metrics tests.
#
# Idempotent and quiet: does nothing when both binaries are on PATH; otherwise installs Debian's
# `prometheus` package (which ships both) with apt-get. Never fails the caller: when installation is
# impossible (not root, no apt-get, no network) it prints one line saying why and exits 0, so the
# tests skip with that reason instead of erroring.
set -u

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_prometheus: apt-get not available; install the Debian package 'prometheus' by hand"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure_prometheus: not root; run 'apt-get install prometheus' as root"
    exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
# The package's post-install may try to start a service; there is no init system here, which is fine:
# the tests start their own prometheus on loopback. policy-rc.d keeps invoke-rc.d from trying.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    created_policy=1
fi
if ! apt-get install -y -qq --no-install-recommends prometheus >"$log" 2>&1; then
    apt-get update -qq >>"$log" 2>&1
    apt-get install -y -qq --no-install-recommends prometheus >>"$log" 2>&1
fi
if [ "${created_policy:-0}" = "1" ]; then
    rm -f /usr/sbin/policy-rc.d
fi

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    exit 0
fi
echo "ensure_prometheus: could not install the Debian package 'prometheus': $(tail -n 1 "$log")"
exit 0
