#!/usr/bin/env bash
# Debian's Chromium for the browser tests (Playwright drives it; never `playwright install`).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then echo "[setup] chromium present"; exit 0; fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[setup] no apt-get: install Chromium yourself for the browser tests (they skip without it)"; exit 0
fi
echo "[setup] installing chromium with apt-get"
$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null \
  || echo "[setup] could not install chromium: the browser tests will skip"
