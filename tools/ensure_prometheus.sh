#!/usr/bin/env bash
# Make `promtool` and `prometheus` available for the rule, dashboard and end-to-end metrics tests:
# Debian's `prometheus` package ships both (tools/ensure_debian.sh: idempotent, never fails the caller).
exec bash "$(dirname "$0")/ensure_debian.sh" ensure_prometheus prometheus promtool prometheus
