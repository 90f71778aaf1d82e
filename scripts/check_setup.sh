#!/usr/bin/env bash
# Checks the README's set-up as a new user on Debian 12 meets it (slow: it installs from the package index; run
# it by hand): a fresh clone of this checkout's HEAD in a temporary directory, set up with Debian's own
# /usr/bin/python3 first on PATH (externally managed, PEP 668), mcp-gateway linked into a temporary bin
# directory (not /usr/local/bin), then the demo config checked and served: /readyz must show both demo upstreams
# up. Nothing is installed outside the temporary directory (apt packages aside).
#   scripts/check_setup.sh [--keep]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/mcpgw-setup.XXXXXX)"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ "${1:-}" = "--keep" ] || rm -rf "$work"
}
trap 'cleanup "${KEEP:-}"' EXIT
[ "${1:-}" = "--keep" ] && KEEP=--keep

git clone -q "$repo" "$work/repo"
cd "$work/repo"
export PATH="/usr/bin:/bin:/usr/sbin:/sbin"
export MCPGW_BIN_DIR="$work/bin"
unset VIRTUAL_ENV PYTHONPATH PYTHONHOME
python3 -c 'import sys; assert sys.executable == "/usr/bin/python3", sys.executable'
if python3 -m pip install --dry-run pip >/dev/null 2>&1; then
  echo "note: /usr/bin/python3 is not externally managed here (pip into it would work)"
fi

scripts/setup.sh
.venv/bin/python -c 'import sys; assert sys.prefix != sys.base_prefix and sys.base_prefix == "/usr", sys.base_prefix'
grep -q '^home = /usr/bin$' .venv/pyvenv.cfg
if (cd / && /usr/bin/python3 -c 'import gateway' 2>/dev/null); then echo "FAIL: the system python has the gateway" >&2; exit 1; fi

export PATH="$MCPGW_BIN_DIR:$PATH"   # what /usr/local/bin is for the README's commands
[ "$(command -v mcp-gateway)" = "$MCPGW_BIN_DIR/mcp-gateway" ]
mcp-gateway check-config gateway.toml

free_port() { /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port="$(free_port)"
admin="$(free_port)"
sed -e "s/^listen = \"127.0.0.1:8080\"/listen = \"127.0.0.1:$port\"/" \
    -e "s/^admin_listen = \"127.0.0.1:9464\"/admin_listen = \"127.0.0.1:$admin\"/" gateway.toml > "$work/gateway.toml"
grep -q "admin_listen = \"127.0.0.1:$admin\"" "$work/gateway.toml"
sed -i "s#^path = \"rego\"#path = \"$work/repo/rego\"#; s#^path = \"var/audit.jsonl\"#path = \"$work/audit.jsonl\"#" "$work/gateway.toml"
mcp-gateway serve --config "$work/gateway.toml" > "$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  if /usr/bin/python3 - "$admin" <<'EOF' 2>/dev/null; then break; fi
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=2) as r:
    d = json.load(r)
assert d["ready"] and all(u["up"] for u in d["upstreams"].values()) and set(d["upstreams"]) == {"time", "git"}
EOF
  sleep 0.2
done
/usr/bin/python3 - "$admin" <<'EOF'
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=2) as r:
    d = json.load(r)
print("readyz:", json.dumps(d["upstreams"]))
assert d["ready"], d
EOF
echo "check_setup: ok (fresh clone set up with /usr/bin/python3 in $work)"
