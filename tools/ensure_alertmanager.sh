#!/usr/bin/env bash
# Make `amtool` and the Alertmanager (Debian names it `prometheus-alertmanager`) available for
# tests/integration/test_alertmanager.py: Debian's `prometheus-alertmanager` package ships both
# (tools/ensure_debian.sh: idempotent, never fails the caller).
exec bash "$(dirname "$0")/ensure_debian.sh" ensure_alertmanager prometheus-alertmanager amtool prometheus-alertmanager
