"""Upstreams that cannot start, of every kind, do not take the gateway down (issue 11, finding 1).

A contained stdio upstream whose ``cwd`` or program is missing, one that never answers its handshake, an HTTP
upstream nobody listens for and an uncontained stdio upstream with a missing program: the gateway serves what
it can (an uncontained fixture and the built-in shell), names each down upstream and why in ``/readyz``, keeps
serving after their start timeouts and retries, and brings one up once what it lacked appears.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import (
    ECHO,
    KEYS,
    NODE_MODULES,
    REPO,
    RunningGateway,
    default_config,
    free_port,
    mcp_client,
    node_containment,
    start_gateway,
    stdio_upstream,
)

pytestmark = pytest.mark.anyio

SERVER = NODE_MODULES / "@modelcontextprotocol" / "server-filesystem" / "dist" / "index.js"
DOWN = ("nocwd", "noprog", "hang", "nohttp", "missing")


def _needs() -> None:
    if os.geteuid() != 0 or not shutil.which("bwrap"):
        pytest.skip("needs root and bubblewrap (contained upstreams)")
    if not SERVER.exists() or not shutil.which("node"):
        pytest.skip("npm server-filesystem not installed (run npm ci in tests/npm)")


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    _needs()
    work = Path(tempfile.mkdtemp(prefix="start-failures.", dir="/tmp"))
    os.chmod(work, 0o711)
    port = free_port()
    node = shutil.which("node")
    upstreams = (
        stdio_upstream("echo", ECHO)
        + f"""
[[upstreams]]
name = "sh"
transport = "builtin"
tools = "shell"
containment = "node"

[[upstreams]]
name = "nocwd"
transport = "stdio"
cwd = "{work}/no/such/dir"
command = ["{node}", "{SERVER}", "{{workspace}}"]
containment = "node"
start_timeout_s = 3

[[upstreams]]
name = "noprog"
transport = "stdio"
command = ["/usr/bin/no-such-mcp-server"]
containment = "node"
start_timeout_s = 3

[[upstreams]]
name = "hang"
transport = "stdio"
command = ["/usr/bin/sleep", "600"]
containment = "node"
start_timeout_s = 2

[[upstreams]]
name = "late"
transport = "stdio"
cwd = "{{workspace}}/later"
command = ["{node}", "{SERVER}", "{{workspace}}"]
containment = "node"
start_timeout_s = 10

[[upstreams]]
name = "nohttp"
transport = "http"
url = "http://127.0.0.1:{free_port()}/mcp"
start_timeout_s = 2

{stdio_upstream("missing", ["/usr/bin/no-such-mcp-server"], "start_timeout_s = 3")}
"""
    )
    text = default_config(
        port,
        work,
        upstreams,
        extra=node_containment(work, uid_base=350000),
        policy=REPO / "tests" / "containment_policy",
    )
    # serving starts within the longest start timeout (10 s); the machine may be slow to start the process
    g = start_gateway(work, text, port, ready_timeout=120, wait_ready=False)
    yield g
    g.stop()
    shutil.rmtree(work, ignore_errors=True)


def readiness(gw: RunningGateway) -> tuple[int, dict[str, Any]]:
    base = getattr(gw, "admin_base", gw.base)
    r = httpx2.get(base + "/readyz", timeout=5)
    return r.status_code, r.json()


def wait_for(gw: RunningGateway, what: str, check: Any, within: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        code, detail = readiness(gw)
        if check(code, detail):
            return detail
        assert gw.proc.poll() is None, gw.log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what}: {detail}"
        time.sleep(0.2)


def text(r: Any) -> str:
    return "".join(getattr(c, "text", "") for c in r.content)


async def serves(gw: RunningGateway) -> None:
    """Tools of the upstreams that are up are listed and called; nothing of the down ones is."""
    async with mcp_client(gw.url, KEYS["ci-bot"][2]) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert {"echo__echo", "sh__run"} <= names, names
        assert not any(n.split("__")[0] in DOWN for n in names), names
        r = await c.call_tool("echo__echo", {"text": "still here"})
        assert not r.is_error and "still here" in text(r)
        r = await c.call_tool("sh__run", {"command": "echo contained"})
        assert not r.is_error and "contained" in text(r), text(r)


async def test_the_gateway_serves_and_names_what_is_down(gw: RunningGateway) -> None:
    detail = wait_for(
        gw,
        "every failing upstream reported",
        lambda code, d: (
            code == 503
            and all(d["upstreams"][n]["error"] not in (None, "not started", "not connected yet") for n in DOWN)
        ),
    )
    ups = detail["upstreams"]
    assert ups["echo"]["up"] and ups["sh"]["up"]
    assert not any(ups[n]["up"] for n in DOWN)
    assert "cannot change to" in ups["nocwd"]["error"] and "no/such/dir" in ups["nocwd"]["error"]
    assert "could not start" in ups["noprog"]["error"]
    assert "did not initialize in time" in ups["hang"]["error"]
    assert "cannot change to" in ups["late"]["error"]
    await serves(gw)


async def test_it_keeps_serving_past_the_start_timeouts_and_retries(gw: RunningGateway) -> None:
    """The bug: the first failed contained start ended the gateway's task group (every /mcp then answered 500)."""
    log = gw.log
    deadline = time.monotonic() + 60
    while log.read_text().count("upstream hang: worker could not start") < 2:  # its first retry has failed too
        assert gw.proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    await serves(gw)
    assert "Task group is not initialized" not in log.read_text()
    assert "background task" not in log.read_text()  # nothing needed the guard: each connector handled its own


def bring_late_up(gw: RunningGateway) -> None:
    later = gw.workdir / "workspaces" / "_catalog" / "later"
    if not later.exists():
        wait_for(
            gw, "late reported down", lambda code, d: "cannot change to" in (d["upstreams"]["late"]["error"] or "")
        )
        later.mkdir()
        os.chmod(later, 0o755)
    wait_for(
        gw,
        "late up after a retry",
        lambda code, d: d["upstreams"]["late"]["up"] and d["upstreams"]["late"]["tools"] > 0,
    )


async def test_an_upstream_comes_up_when_what_it_lacked_appears(gw: RunningGateway) -> None:
    bring_late_up(gw)
    async with mcp_client(gw.url, KEYS["ci-bot"][2]) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert "late__list_directory" in names, names


async def test_an_agents_worker_that_cannot_start_is_reported_without_host_details(gw: RunningGateway) -> None:
    """The catalog's worker of "late" runs (its workspace has later/), an agent's own worker cannot: the agent is
    told its call's worker could not start; the host paths and the server's stderr stay in the gateway's log."""
    bring_late_up(gw)
    async with mcp_client(gw.url, KEYS["ci-bot"][2]) as c:
        with pytest.raises(MCPError) as failed:
            await c.call_tool("late__list_directory", {"path": "."})
    message = failed.value.message
    assert "worker could not start" in message and "decision id" in message, message
    assert str(gw.workdir) not in message and "mcpgw-helper" not in message and "later" not in message, message
    assert "worker for agent ci-bot: worker could not start" in gw.log.read_text()
    assert "cannot change to" in gw.log.read_text()


async def test_a_failed_first_start_does_not_hold_the_gateway_for_its_whole_timeout(tmp_path: Path) -> None:
    """A missing program, a server nobody listens for: each fails at once, and the gateway serves then, not after
    start_timeout_s (10 minutes here)."""
    port = free_port()
    upstreams = (
        stdio_upstream("echo", ECHO)
        + stdio_upstream("missing", ["/usr/bin/no-such-mcp-server"], "start_timeout_s = 600")
        + f"""
[[upstreams]]
name = "nohttp"
transport = "http"
url = "http://127.0.0.1:{free_port()}/mcp"
start_timeout_s = 600
"""
    )
    g = start_gateway(tmp_path, default_config(port, tmp_path, upstreams), port, ready_timeout=120, wait_ready=False)
    try:
        code, detail = readiness(g)
        assert code == 503 and not detail["upstreams"]["missing"]["up"], detail
        assert "no-such-mcp-server" in detail["upstreams"]["missing"]["error"]
        assert not detail["upstreams"]["nohttp"]["up"] and "not reachable" in detail["upstreams"]["nohttp"]["error"]
        async with mcp_client(g.url, KEYS["ci-bot"][2]) as c:
            r = await c.call_tool("echo__echo", {"text": "served"})
            assert "served" in text(r)
    finally:
        g.stop()
