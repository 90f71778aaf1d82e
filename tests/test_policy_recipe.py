"""docs/policy.md's "Adding a team", executed step by step as written: its code blocks are read out of the page
(a file block is written as that new file, the gateway.toml block appended to the config, each `$ mcp-gateway`
line run and its documented output checked), against a running gateway with the shipped policy, which takes the
new policy and the new key without a restart; then the new team's agent calls through the real gateway. The
recipe once ended with a line that made every decision for the team fail; now a page that drifts from what works
fails here.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from gateway.policy.loader import load_policy
from tests.conftest import REPO, RunningGateway, default_config, free_port, mcp_client, start_gateway

pytestmark = pytest.mark.anyio

DOC = REPO / "docs" / "policy.md"
_FENCE = re.compile(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```$', re.M | re.S)


@dataclass
class Block:
    lang: str
    title: str | None
    text: str


def recipe() -> list[Block]:
    """The code blocks of the "Adding a team" section, in order."""
    page = DOC.read_text()
    start = page.index("### Adding a team\n")
    end = min(i for i in (page.find("\n## ", start), page.find("\n### ", start + 1)) if i > 0)
    return [Block(m.group(1), m.group(2), m.group(3)) for m in _FENCE.finditer(page[start:end])]


def _config(port: int, work: Path) -> str:
    upstreams = f"""
[[upstreams]]
name = "time"
transport = "stdio"
command = ["{sys.executable}", "-m", "mcp_server_time", "--local-timezone", "UTC"]
"""
    text = default_config(port, work, upstreams, policy=Path("rego"))
    return text.replace('path = "rego"\n', 'path = "rego"\nwatch = true\nwatch_interval_s = 0.2\n', 1)


def _run_console(block: Block, cwd: Path) -> None:
    """Each `$ mcp-gateway ...` line, run in the gateway's directory; every output line shown must be printed."""
    commands: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line.rstrip())
    assert commands, block.text
    for command, shown in commands:
        argv = shlex.split(command)
        assert argv[0] == "mcp-gateway", command
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", *argv[1:]],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        printed = [ln.rstrip() for ln in proc.stdout.splitlines()]
        assert proc.returncode == 0, f"{command}:\n{proc.stdout}\n{proc.stderr}"
        for want in shown:
            assert want in printed, f"{command}: the page shows {want!r}; it printed:\n{proc.stdout}"


def _revision_live(gw: RunningGateway) -> str:
    metrics = httpx2.get(gw.admin_base + "/metrics").text
    m = re.search(r'mcp_gateway_policy_revision_info\{revision="([^"]+)"\}', metrics)
    return m.group(1) if m else ""


@pytest.mark.timeout(600)
async def test_adding_a_team_as_docs_policy_md_says() -> None:
    blocks = recipe()
    assert [b.title for b in blocks if b.title] == [
        "rego/teams/qa.rego",
        "rego/teams/qa/data.json",
        "rego/teams/qa_test.yaml",
        "gateway.toml",
    ], "the recipe's steps changed: update this test's expectations with the page"

    work = Path(tempfile.mkdtemp(prefix="gw-recipe-", dir="/tmp"))
    shutil.copytree(REPO / "rego", work / "rego")
    port = free_port()
    gw = start_gateway(work, _config(port, work), port)
    try:
        before = _revision_live(gw)
        key = None
        for block in blocks:  # the steps, in the page's order
            if block.lang == "console":
                _run_console(block, work)
            elif block.title == "gateway.toml":
                with (work / "gateway.toml").open("a") as f:
                    f.write("\n" + block.text)
                key = re.search(r"# key: (\S+)", block.text).group(1)  # type: ignore[union-attr]
                sha = re.search(r'sha256 = "([0-9a-f]{64})"', block.text).group(1)  # type: ignore[union-attr]
                assert hashlib.sha256(key.encode()).hexdigest() == sha
            else:
                assert block.title is not None, f"a {block.lang} block without a file name in the recipe"
                target = work / block.title
                assert not target.exists(), f"{block.title}: the recipe adds files, it does not replace them"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(block.text)

        # Step 5: the policy goes live on its own (hot reload), once compiled and its tables pass.
        want = load_policy(work / "rego").revision
        deadline = time.monotonic() + 120
        while _revision_live(gw) != want:
            assert time.monotonic() < deadline, f"revision {want} never went live:\n{gw.log.read_text()[-3000:]}"
            time.sleep(0.2)
        assert want != before
        assert "replaces" in gw.log.read_text()

        # ... and so does the key: the gateway reloads its identity when its config file changes.
        assert key is not None
        while httpx2.post(gw.url, headers={"Authorization": f"Bearer {key}"}, json={}).status_code == 401:
            assert time.monotonic() < deadline, f"the key never went live:\n{gw.log.read_text()[-3000:]}"
            time.sleep(0.2)
        assert gw.proc.poll() is None  # the same gateway process: no restart

        # Step 6: the new team's agent, through the real gateway.
        async with mcp_client(gw.url, key) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert tools == {"time__get_current_time"}
            ok = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert not ok.is_error, ok.content
            denied = await client.call_tool("time__get_current_time", {"timezone": "Asia/Tokyo"})
            assert denied.is_error
            assert "timezone Asia/Tokyo is not one the qa team works in" in denied.content[0].text  # type: ignore[union-attr]
    finally:
        gw.stop()
        shutil.rmtree(work, ignore_errors=True)
