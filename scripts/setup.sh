#!/usr/bin/env bash
# Installs everything the gateway and its test suite need on a fresh Debian 12 machine (as root, or with sudo).
#   scripts/setup.sh          the gateway and the demo upstreams
#   scripts/setup.sh --test   also the test tools: bubblewrap, prometheus, npm packages for the suites
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

apt_pkgs=(bubblewrap libseccomp2 util-linux python3)
[ $want_test -eq 1 ] && apt_pkgs+=(prometheus)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts a prometheus service on install; the tests run their own on loopback ports.
if [ $want_test -eq 1 ] && command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop prometheus 2>/dev/null || true; fi

python3 -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ $want_test -eq 1 ]; then
  python3 -m pip install -q --no-warn-script-location -e '.[demo,test]'
else
  python3 -m pip install -q --no-warn-script-location -e '.[demo]'
fi

if [ $want_test -eq 1 ]; then
  for dir in conformance/mcp tests/npm; do
    if [ -f "$dir/package.json" ]; then (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error); fi
  done
fi
command -v pyenv >/dev/null 2>&1 && pyenv rehash 2>/dev/null || true
echo "setup done"
