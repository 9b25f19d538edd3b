#!/usr/bin/env bash
# Installs Debian's chromium for the review-page browser test (best effort: the test skips,
# saying why, when no browser can be installed).
command -v chromium >/dev/null 2>&1 && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
if command -v apt-get >/dev/null 2>&1; then
  ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "note: could not install chromium; the browser test of review.html will be skipped"
fi
exit 0
