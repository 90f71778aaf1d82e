"""``check-config`` reports a stdio upstream whose program or working directory is missing on this host
(issue 11, finding 6): as ``file: key: what is wrong`` lines, exit status 2. The shipped configs pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, api_keys_toml, gateway_cli


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return gateway_cli("check-config", str(config))


def test_missing_programs_and_working_directories_are_errors(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "notexec.sh").write_text("#!/bin/sh\n")
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f"""
{api_keys_toml()}
[policy]
path = "{REPO / "rego"}"

[[upstreams]]
name = "bare"
transport = "stdio"
command = ["no-such-mcp-server", "--flag"]

[[upstreams]]
name = "nocwd"
transport = "stdio"
cwd = "no/such/dir"
command = ["/usr/bin/env"]

[[upstreams]]
name = "abs"
transport = "stdio"
command = ["/usr/bin/no-such-mcp-server"]

[[upstreams]]
name = "rel"
transport = "stdio"
cwd = "srv"
command = ["./notexec.sh"]

[[upstreams]]
name = "fine"
transport = "stdio"
cwd = "srv"
command = ["{sys.executable}", "-V"]
""")
    r = check(cfg)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"{cfg}: upstreams[0].command: upstream 'bare': program 'no-such-mcp-server' is not found on its PATH",
        f"{cfg}: upstreams[1].cwd: upstream 'nocwd': {tmp_path}/no/such/dir is not a directory on this host",
        f"{cfg}: upstreams[2].command: upstream 'abs': program /usr/bin/no-such-mcp-server does not exist on this host",
        f"{cfg}: upstreams[3].command: upstream 'rel': program {tmp_path}/srv/notexec.sh is not an executable file "
        "on this host",
    ], r.stderr
    assert "ok" not in r.stdout


def test_a_contained_upstream_is_checked_too(tmp_path: Path) -> None:
    """The contained example's ``fs`` upstream without its node_modules: the case that took the gateway down."""
    text = (REPO / "examples" / "contained.toml").read_text()
    text = text.replace('"../rego"', f'"{REPO / "rego"}"').replace(
        '"contained.mxc.json"', f'"{REPO / "examples" / "contained.mxc.json"}"'
    )
    text = text.replace('cwd = "../tests/npm/node_modules/', 'cwd = "../missing/node_modules/')
    cfg = tmp_path / "examples" / "contained.toml"
    cfg.parent.mkdir()
    cfg.write_text(text)
    r = check(cfg)
    assert r.returncode == 2, r
    assert r.stderr.strip().splitlines() == [
        f"{cfg}: upstreams[2].cwd: upstream 'fs': {tmp_path}/missing/node_modules/@modelcontextprotocol/"
        "server-filesystem is not a directory on this host"
    ], r.stderr


def test_the_shipped_demo_config_is_ok() -> None:
    r = check(REPO / "gateway.toml")
    assert r.returncode == 0 and "ok (2 upstreams" in r.stdout, r
