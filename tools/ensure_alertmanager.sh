#!/usr/bin/env bash
# Make `amtool` and `alertmanager` available for tests/integration/test_alertmanager.py.
#
# Idempotent and quiet: does nothing when amtool and an Alertmanager binary are on PATH (Debian
# names it `prometheus-alertmanager`, upstream `alertmanager`); otherwise installs Debian's
# `prometheus-alertmanager` package (which ships both) with apt-get. Never fails the caller: when
# installation is impossible (not root, no apt-get, no network) it prints one line saying why and
# exits 0, so the tests skip with that reason instead of erroring.
set -u

have_all() {
    command -v amtool >/dev/null 2>&1 &&
        { command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1; }
}

if have_all; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_alertmanager: apt-get not available; install the Debian package 'prometheus-alertmanager' by hand"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure_alertmanager: not root; run 'apt-get install prometheus-alertmanager' as root"
    exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
# No init system here: keep invoke-rc.d from trying to start the packaged service; the tests start
# their own Alertmanager on loopback.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    created_policy=1
fi
if ! apt-get install -y -qq --no-install-recommends prometheus-alertmanager >"$log" 2>&1; then
    apt-get update -qq >>"$log" 2>&1
    apt-get install -y -qq --no-install-recommends prometheus-alertmanager >>"$log" 2>&1
fi
if [ "${created_policy:-0}" = "1" ]; then
    rm -f /usr/sbin/policy-rc.d
fi

if have_all; then
    exit 0
fi
echo "ensure_alertmanager: could not install the Debian package 'prometheus-alertmanager': $(tail -n 1 "$log")"
exit 0
