"""A real third-party MCP server, contained: npm ``@modelcontextprotocol/server-filesystem`` under bubblewrap.

The server is told it may serve ``/`` — its own path checks would let anything through — and the sandbox alone
keeps each agent in its workspace. Needs ``npm ci`` in tests/npm (the peers' test dependencies).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    KEYS,
    NODE_MODULES,
    REPO,
    RunningGateway,
    default_config,
    free_port,
    mcp_client,
    node_containment,
    start_gateway,
)

pytestmark = pytest.mark.anyio

SERVER = NODE_MODULES / "@modelcontextprotocol" / "server-filesystem" / "dist" / "index.js"


@pytest.fixture(scope="module")
def fsgw() -> Iterator[RunningGateway]:
    if not SERVER.exists() or not shutil.which("node"):
        pytest.skip("npm server-filesystem not installed (run npm ci in tests/npm)")
    work = Path(tempfile.mkdtemp(prefix="containment-fs.", dir="/tmp"))
    os.chmod(work, 0o711)
    port = free_port()
    text = default_config(
        port,
        work,
        f"""
[[upstreams]]
name = "fs"
transport = "stdio"
command = ["{shutil.which("node")}", "{SERVER}", "/"]
containment = "node"
""",
        extra=node_containment(work, uid_base=340000),
        policy=REPO / "tests" / "containment_policy",
    )
    gw = start_gateway(work, text, port)
    yield gw
    gw.stop()
    shutil.rmtree(work, ignore_errors=True)


def text(r: object) -> str:
    return "".join(getattr(c, "text", "") for c in r.content)  # type: ignore[attr-defined]


async def test_the_sandbox_not_the_server_keeps_agents_in_their_workspace(fsgw: RunningGateway) -> None:
    ws = fsgw.workdir / "workspaces"
    async with mcp_client(fsgw.url, KEYS["ci-bot"][2]) as c:
        w = await c.call_tool("fs__write_file", {"path": str(ws / "ci-bot" / "mine.txt"), "content": "ci-bot's"})
        assert not w.is_error, text(w)
        for path in ("/etc/shadow", str(fsgw.workdir / "gateway.toml"), "/root/.bashrc"):
            r = await c.call_tool("fs__read_text_file", {"path": path})
            assert r.is_error and "ENOENT" in text(r), (path, text(r))
        listing = await c.call_tool("fs__list_directory", {"path": "/"})
        assert "[DIR] usr" in text(listing) and "root" not in text(listing) and "home" not in text(listing)
        escape = await c.call_tool("fs__write_file", {"path": "/usr/evil.txt", "content": "x"})
        assert escape.is_error
    async with mcp_client(fsgw.url, KEYS["admin"][2]) as c:
        other = await c.call_tool("fs__read_text_file", {"path": str(ws / "ci-bot" / "mine.txt")})
        assert other.is_error and "ci-bot's" not in text(other)
    assert (ws / "ci-bot" / "mine.txt").read_text() == "ci-bot's"
    assert not Path("/usr/evil.txt").exists()
