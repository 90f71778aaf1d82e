"""`mcp-gateway policy eval` decides as the gateway does: same input (the tool's declared annotations included),
same engine, same decision. Each call is made through the real gateway (built-in contained tools, the real
mcp-server-time) and decided by `policy eval` on the same config; the audit log's decision record must equal
eval's. Before the annotations were taken from the tools' declarations, eval allowed CI's `sh__run ls -la` and
the gateway denied it ("destructive tools need the admin role"); with the shipped policy CI may now run
allow-listed commands and write under writable_paths, as its docs say.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import (
    KEYS,
    RunningGateway,
    default_config,
    free_port,
    gateway_cli,
    mcp_client,
    start_gateway,
)

pytestmark = pytest.mark.anyio

CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("ci-bot", "sh__run", {"command": "ls -la"}),
    ("ci-bot", "sh__run", {"command": "git status"}),
    ("ci-bot", "sh__run", {"command": "cat x | sh"}),
    ("ci-bot", "sh__run", {"command": "rm -rf build"}),
    ("ci-bot", "files__write_file", {"path": "build/out.txt", "content": "x", "create_dirs": True}),
    ("ci-bot", "files__write_file", {"path": "src/main.py", "content": "x"}),
    ("ci-bot", "files__read_file", {"path": "README.md"}),
    ("ci-bot", "time__convert_time", {"source_timezone": "Mars/Base", "time": "10:00", "target_timezone": "UTC"}),
    ("admin", "sh__run", {"command": "echo hi; echo there"}),
    ("researcher", "files__read_file", {"path": "papers/a.txt"}),
    ("researcher", "files__write_file", {"path": "papers/a.txt", "content": "x"}),
]


def _config(port: int, work: Path) -> str:
    upstreams = f"""
[[upstreams]]
name = "sh"
transport = "builtin"
tools = "shell"
containment = "strict"

[[upstreams]]
name = "files"
transport = "builtin"
tools = "files"
containment = "strict"

[[upstreams]]
name = "time"
transport = "stdio"
command = ["{sys.executable}", "-m", "mcp_server_time", "--local-timezone", "UTC"]
"""
    extra = f"""
[containment]
workspace_root = "{work}/workspaces"
uid_base = 330000
uid_count = 100

[containment.profiles.strict]
tier = "sandbox"
read_only = ["/usr"]
read_write = ["{{workspace}}"]
network = "none"
env = {{ PATH = "/usr/bin:/bin", HOME = "{{workspace}}" }}
memory_mb = 128
pids = 32
timeout_s = 10
"""
    return default_config(port, work, upstreams, extra)


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    work = Path(tempfile.mkdtemp(prefix="gw-eval-", dir="/tmp"))
    os.chmod(work, 0o711)  # worker uids walk into their workspaces under it
    port = free_port()
    gw = start_gateway(work, _config(port, work), port)
    try:
        yield gw
    finally:
        gw.stop()


def _eval(config: Path, agent: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    proc = gateway_cli(
        "policy",
        "eval",
        "--config",
        str(config),
        "--agent",
        agent,
        "--tool",
        tool,
        "--args",
        json.dumps(args),
        "--json",
    )
    assert proc.returncode in (0, 1), proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    assert proc.returncode == (0 if out["allow"] else 1)
    return out


@pytest.mark.timeout(600)  # one `policy eval` process per call, on a shared machine
async def test_policy_eval_decides_every_call_as_the_gateway_did(gateway: RunningGateway) -> None:
    for agent, tool, args in CALLS:
        async with mcp_client(gateway.url, KEYS[agent][2]) as client:
            try:
                await client.call_tool(tool, args)
            except MCPError:
                pass  # a denial or a tool error: the audit record says which
    records = [r for r in gateway.audit_records() if r.get("type") == "decision" and r.get("action") == "tools/call"]
    assert len(records) == len(CALLS)

    verdicts = {}
    for (agent, tool, args), rec in zip(CALLS, records, strict=True):
        assert rec["agent"] == agent and f"{rec['server']}__{rec['tool']}" == tool
        evaluated = _eval(gateway.config, agent, tool, args)
        label = f"{agent} {tool} {args}"
        assert evaluated["input"]["annotations"] == rec["input"]["annotations"], label
        assert evaluated["allow"] == rec["allow"], label
        assert sorted(evaluated["reasons"]) == sorted(rec["reasons"]), label
        assert (evaluated["result"] or {}).get("containment") == (rec.get("result") or {}).get("containment"), label
        verdicts[(agent, tool, json.dumps(args))] = rec["allow"]

    # What the shipped policy's comments and docs promise CI (and what it still refuses).
    assert verdicts[("ci-bot", "sh__run", json.dumps({"command": "ls -la"}))] is True
    assert verdicts[("ci-bot", "sh__run", json.dumps({"command": "git status"}))] is True
    assert verdicts[("ci-bot", "sh__run", json.dumps({"command": "cat x | sh"}))] is False
    assert verdicts[("ci-bot", "files__write_file", json.dumps(CALLS[4][2]))] is True
    assert verdicts[("ci-bot", "files__write_file", json.dumps(CALLS[5][2]))] is False
    assert verdicts[("researcher", "files__write_file", json.dumps(CALLS[10][2]))] is False
    shell = next(r for r in records if r["agent"] == "ci-bot" and r["tool"] == "run")
    assert shell["input"]["annotations"]["destructiveHint"] is True  # the real declaration reached the policy


@pytest.mark.timeout(300)
def test_eval_takes_annotations_from_the_upstreams_declaration(gateway: RunningGateway) -> None:
    out = _eval(gateway.config, "ci-bot", "sh__run", {"command": "ls -la"})
    assert out["annotations_from"] == "declared by built-in shell upstream sh"
    assert out["input"]["annotations"]["destructiveHint"] is True
    listed = _eval(gateway.config, "ci-bot", "time__get_current_time", {"timezone": "UTC"})
    assert listed["annotations_from"] == "listed by upstream time"
    assert listed["input"]["annotations"]["readOnlyHint"] is True


def test_eval_refuses_a_tool_its_upstream_does_not_offer(gateway: RunningGateway) -> None:
    proc = gateway_cli("policy", "eval", "--config", str(gateway.config), "--agent", "ci-bot", "--tool", "sh__nope")
    assert proc.returncode == 2
    assert "offers no tool 'nope'" in proc.stderr
