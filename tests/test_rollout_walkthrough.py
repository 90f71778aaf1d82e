"""docs/policy.md's "Rolling out a rule", executed step by step as written: its code blocks are read out of the page
(a file block is appended to that file, the gateway.toml block's settings added to the config's [policy], each `$`
line run in the gateway's directory and the output the page shows checked), against a real gateway with the
shipped policy and the real mcp-server-time; between the steps a research agent calls through the real SDK client:
the shadow disagrees without changing the answer, the promoted rule on trial lets the call through as would_deny,
the enforced rule denies it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from gateway.policy.loader import load_policy
from tests.conftest import KEYS, REPO, RunningGateway, default_config, free_port, mcp_client, start_gateway
from tests.test_policy_recipe import _FENCE, Block

pytestmark = pytest.mark.anyio

DOC = REPO / "docs" / "policy.md"
RESEARCHER = KEYS["researcher"][2]
TOKYO = {"timezone": "Asia/Tokyo"}
REASON = "research reads the time in UTC only (timezone Asia/Tokyo)"


def walkthrough() -> list[Block]:
    page = DOC.read_text()
    start = page.index("## Rolling out a rule\n")
    end = page.index("\n### ", start)
    return [Block(m.group(1), m.group(2), m.group(3)) for m in _FENCE.finditer(page[start:end])]


def _config(port: int, work: Path) -> str:
    upstreams = f"""
[[upstreams]]
name = "time"
transport = "stdio"
command = ["{sys.executable}", "-m", "mcp_server_time", "--local-timezone", "UTC"]
"""
    text = default_config(port, work, upstreams, policy=Path("rego"))
    text = text.replace('path = "rego"\n', 'path = "rego"\nwatch = true\nwatch_interval_s = 0.2\n', 1)
    return text.replace(f'path = "{work / "audit.jsonl"}"', 'path = "var/audit.jsonl"', 1)


def _matches(shown: str, printed: list[str]) -> bool:
    """A line the page shows, where a word with ``...`` stands for any word (ids and revisions vary)."""
    words = [".*" if "..." in w else re.escape(w) for w in shown.split()]
    pattern = re.compile(r"\s+".join(words))
    return any(pattern.fullmatch(line.strip()) for line in printed)


def _run_console(block: Block, cwd: Path, bin_dir: Path) -> None:
    commands: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands and line.strip():
            commands[-1][1].append(line.rstrip())
    assert commands, block.text
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for command, shown in commands:
        proc = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
        printed = [ln.rstrip() for ln in proc.stdout.splitlines()]
        assert proc.returncode == 0, f"{command}:\n{proc.stdout}\n{proc.stderr}"
        for want in shown:
            assert _matches(want, printed), f"{command}: the page shows {want!r}; it printed:\n{proc.stdout}"


def _revision_live(gw: RunningGateway) -> str:
    m = re.search(
        r'mcp_gateway_policy_revision_info\{revision="([^"]+)"\}', httpx2.get(gw.admin_base + "/metrics").text
    )
    return m.group(1) if m else ""


def _wait_live(gw: RunningGateway, work: Path) -> None:
    want = load_policy(work / "rego").revision
    deadline = time.monotonic() + 120
    while _revision_live(gw) != want:
        assert time.monotonic() < deadline, f"revision {want} never went live:\n{gw.log.read_text()[-3000:]}"
        time.sleep(0.2)


def _metric(gw: RunningGateway, name: str) -> float:
    total = 0.0
    for line in httpx2.get(gw.admin_base + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _call(gw: RunningGateway, args: dict[str, Any]) -> Any:
    async with mcp_client(gw.url, RESEARCHER) as c:
        return await c.call_tool("time__get_current_time", args)


def _text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def _records(work: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (work / "var" / "audit.jsonl").read_bytes().splitlines() if line.strip()]


def _last_outcome(work: Path) -> dict[str, Any]:
    records = [r for r in _records(work) if r["type"] in ("decision", "outcome")]
    last = [r for r in records if r["type"] == "decision" and r["tool"] == "get_current_time"][-1]
    return next(r for r in records if r["type"] == "outcome" and r["decision_id"] == last["decision_id"])


@pytest.mark.timeout(900)
async def test_rolling_out_a_rule_as_docs_policy_md_says() -> None:
    blocks = walkthrough()
    assert [b.title for b in blocks if b.title] == [
        "rego.next/teams/research.rego",
        "rego.next/teams/research_test.rego",
        "rego.next/teams/research_test.yaml",
        "gateway.toml",
    ], "the walkthrough's steps changed: update this test's expectations with the page"
    work = Path(tempfile.mkdtemp(prefix="gw-rollout-", dir="/tmp"))
    shutil.copytree(REPO / "rego", work / "rego")
    bin_dir = work / "bin"
    bin_dir.mkdir()
    (bin_dir / "mcp-gateway").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gateway "$@"\n')
    (bin_dir / "mcp-gateway").chmod(0o755)
    port = free_port()
    config = _config(port, work)
    gw: RunningGateway | None = None
    audit = work / "var" / "audit.jsonl"
    try:
        for block in blocks:  # the steps, in the page's order
            if block.lang == "console":
                _run_console(block, work, bin_dir)
            elif block.title == "gateway.toml":
                # Step 4: the shadow. Its settings go under the config's [policy]; the gateway starts with them.
                settings = block.text.replace("[policy]\n", "", 1)
                assert "[" not in settings, "the page's gateway.toml block is [policy] settings only"
                config = config.replace("[policy]\n", "[policy]\n" + settings, 1)
                gw = start_gateway(work, config, port)
                ok = await _call(gw, TOKYO)  # the live policy answers: allowed
                assert not ok.is_error, ok.content
                assert not (await _call(gw, {"timezone": "UTC"})).is_error
                decided = sum(1 for r in _records(work) if r["type"] == "decision")
                deadline = time.monotonic() + 60
                while _metric(gw, "mcp_gateway_policy_shadow_decisions_total") < decided:
                    assert time.monotonic() < deadline, gw.log.read_text()[-3000:]
                    time.sleep(0.1)
            else:
                assert block.title is not None and block.title.startswith("rego.next/"), block.title
                target = work / block.title
                assert target.exists(), f"{block.title}: the walkthrough adds to a file of the copied policy"
                with target.open("a") as f:
                    f.write(block.text)
            if block.lang != "console" or gw is None:
                continue
            if block.text.startswith("$ cp rego.next/"):
                # Step 5: promoted with the rule on trial: the call goes through, recorded as would_deny.
                _wait_live(gw, work)
                r = await _call(gw, TOKYO)
                assert not r.is_error, r.content
                out = _last_outcome(work)
                assert out["outcome"] == "would_deny" and out["reasons"] == [REASON], out
                assert out["call_outcome"] == "ok"
            elif block.text.startswith("$ sed "):
                # Step 6: enforced.
                _wait_live(gw, work)
                r = await _call(gw, TOKYO)
                assert r.is_error and f"Denied by policy: {REASON}" in _text(r)
                assert not (await _call(gw, {"timezone": "UTC"})).is_error
        assert gw is not None and audit.exists()
        assert gw.proc.poll() is None  # one gateway process from the shadow step to the end: reloads only
    finally:
        if gw is not None:
            gw.stop()
        shutil.rmtree(work, ignore_errors=True)
