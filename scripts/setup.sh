#!/usr/bin/env bash
# Installs everything the gateway and its test suite need on a fresh Debian 12 machine (as root, or with sudo).
#   scripts/setup.sh              the gateway and the demo upstreams
#   scripts/setup.sh --test       also the test tools: bubblewrap, prometheus, npm packages for the suites
#   scripts/setup.sh --venv-only  only make (or reuse) the virtual environment and print its python
# Python packages go into a virtual environment in the checkout (.venv), never into the system's Python (on
# Debian 12 it is externally managed, PEP 668). `mcp-gateway` is linked into $MCPGW_BIN_DIR (default
# /usr/local/bin) so it is on PATH; .venv/bin/mcp-gateway is the same program.
# PYTHON picks the interpreter the environment is made from (default: python3 on PATH, 3.11 or newer).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
want_test=0
[ "$mode" = "--test" ] && want_test=1
PYTHON="${PYTHON:-python3}"
VENV="$PWD/.venv"
BIN_DIR="${MCPGW_BIN_DIR:-/usr/local/bin}"

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# The environment is usable when its python runs and is a virtual environment (not a copy left by another
# machine, or one whose base interpreter was removed): else it is made again.
venv_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null
}

make_venv() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: $PYTHON is not Python 3.11 or newer (set PYTHON=...)" >&2
    exit 1
  fi
  # Debian's python3 makes environments only with python3-venv (ensurepip)
  if command -v dpkg >/dev/null 2>&1 && ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then apt_install python3-venv; fi
  if ! venv_ok; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
  fi
}

if [ "$mode" = "--venv-only" ]; then
  make_venv
  echo "$VENV/bin/python"
  exit 0
fi

apt_pkgs=(bubblewrap libseccomp2 util-linux python3 python3-venv)
[ $want_test -eq 1 ] && apt_pkgs+=(prometheus redis-server nginx)
apt_install "${apt_pkgs[@]}"
# Debian starts prometheus, redis and nginx services on install; the tests run their own on loopback ports.
if [ $want_test -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
  for svc in prometheus redis-server nginx; do $SUDO systemctl stop "$svc" 2>/dev/null || true; done
fi

make_venv
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ $want_test -eq 1 ]; then
  "$VENV/bin/python" -m pip install -q -e '.[demo,test]'
  # OPA's own Go evaluator, the oracle of the engine differential tests (it declares Python >= 3.14, runs on 3.11)
  "$VENV/bin/python" -m pip install -q --ignore-requires-python 'opa-golib-python-bindings==0.4.4'
else
  "$VENV/bin/python" -m pip install -q -e '.[demo]'
fi

# mcp-gateway on PATH; the demo upstreams it launches (mcp-server-time, mcp-server-git) are found next to it
if $SUDO mkdir -p "$BIN_DIR" && $SUDO ln -sfn "$VENV/bin/mcp-gateway" "$BIN_DIR/mcp-gateway"; then
  linked="mcp-gateway -> $BIN_DIR/mcp-gateway"
else
  linked="could not link mcp-gateway into $BIN_DIR: run $VENV/bin/mcp-gateway"
fi

if [ $want_test -eq 1 ]; then
  for dir in conformance/mcp tests/npm; do
    [ -f "$dir/package.json" ] || continue
    # npm ci wipes node_modules first: only when what is there does not satisfy package.json
    if [ -d "$dir/node_modules" ] && (cd "$dir" && npm ls --silent >/dev/null 2>&1); then continue; fi
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  done
fi
echo "setup done: $VENV ($linked)"
