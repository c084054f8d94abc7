#!/usr/bin/env bash
# ensure_debian.sh NAME "PACKAGES" CHECK...: install Debian PACKAGES unless every CHECK holds.
#
# A CHECK is a command name (found on PATH) or an absolute path (an existing file). Idempotent and
# quiet; never fails the caller: when installation is impossible (not root, no apt-get, no network)
# it prints one line saying why and exits 0, so the tests that need the tools skip with that reason.
set -u
name=$1
packages=$2
shift 2

have_all() {
    for check in "$@"; do
        case $check in
        /*) [ -e "$check" ] || return 1 ;;
        *) command -v "$check" >/dev/null 2>&1 || return 1 ;;
        esac
    done
}

if have_all "$@"; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$name: apt-get not available; install the Debian packages '$packages' by hand"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "$name: not root; run 'apt-get install $packages' as root"
    exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
# No init system here: keep invoke-rc.d from starting packaged services; the tests start their own.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    created_policy=1
fi
# shellcheck disable=SC2086 # the package list is meant to split
if ! apt-get install -y -qq --no-install-recommends $packages >"$log" 2>&1; then
    apt-get update -qq >>"$log" 2>&1
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $packages >>"$log" 2>&1
fi
if [ "${created_policy:-0}" = "1" ]; then
    rm -f /usr/sbin/policy-rc.d
fi

if have_all "$@"; then
    exit 0
fi
echo "$name: could not install '$packages': $(tail -n 1 "$log")"
exit 0
