#!/usr/bin/env bash
# Make the 견적서 (quote document) tools available: the Hangul font the PDF embeds (Debian
# `fonts-nanum`: NanumGothic) and `pdftotext`/`pdftoppm` (Debian `poppler-utils`) the document tests
# read the PDF back with.
#
# Idempotent and quiet, like tools/ensure_alertmanager.sh: nothing to do when both are present;
# otherwise apt-get installs them. Never fails the caller: when installation is impossible it prints
# one line saying why and exits 0 (the server then answers FAILED_PRECONDITION for PDF documents, and
# the PDF tests skip with that reason).
set -u

font=/usr/share/fonts/truetype/nanum/NanumGothic.ttf
have_all() {
    [ -f "$font" ] && command -v pdftotext >/dev/null 2>&1 && command -v pdftoppm >/dev/null 2>&1
}

if have_all; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_quote_tools: apt-get not available; install the Debian packages 'fonts-nanum poppler-utils' by hand"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure_quote_tools: not root; run 'apt-get install fonts-nanum poppler-utils' as root"
    exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends fonts-nanum poppler-utils >"$log" 2>&1; then
    apt-get update -qq >>"$log" 2>&1
    apt-get install -y -qq --no-install-recommends fonts-nanum poppler-utils >>"$log" 2>&1
fi

if have_all; then
    exit 0
fi
echo "ensure_quote_tools: could not install 'fonts-nanum poppler-utils': $(tail -n 1 "$log")"
exit 0
