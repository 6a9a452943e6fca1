#!/usr/bin/env bash
# The Debian packages the tests use, installed with apt-get where missing:
#   chromium  the browser tests (Playwright drives it; never `playwright install`)
#   g++       DeepSpeed's CPU communication op, compiled on first use by torch's C++ extension
#             builder (tests/test_train_launcher.py); Debian's g++ brings gcc with it. The corpus
#             converter is pure Python: nothing of ours is compiled.
# Without apt-get (or rights to use it) this says what to install and leaves it to you.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
{ command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1; } || missing+=(g++)
if [ ${#missing[@]} -eq 0 ]; then echo "[setup] chromium and a C++ compiler present"; exit 0; fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[setup] no apt-get: install ${missing[*]} yourself (the tests that need them fail under make test)"; exit 0
fi
echo "[setup] installing ${missing[*]} with apt-get"
$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null \
  || echo "[setup] could not install ${missing[*]}: the tests that need them fail under make test"
