"""Hostile upstreams (tests/fixtures/hostile_upstream.py) over HTTP and stdio, through the real gateway and the
real SDK client: oversized answers are cut while read, a flood of server-to-client requests is bounded, and a
per-session upstream never outlives (or comes back after) its agent session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson
import pytest
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.conftest import (
    ECHO,
    KEYS,
    REPO,
    RunningGateway,
    default_config,
    free_port,
    mcp_client,
    start_gateway,
    stdio_upstream,
)

pytestmark = pytest.mark.anyio
KEY = KEYS["ci-bot"][2]
HOSTILE = [sys.executable, str(REPO / "tests" / "fixtures" / "hostile_upstream.py")]
LIMIT = 1024 * 1024

ALLOW_ALL = (
    "package gateway\nimport rego.v1\n"
    'decision := {"allow": true, "reasons": []} if input.agent.auth == "api_key"\n'
    'default decision := {"allow": false, "reasons": ["not an api key"]}\n'
)


def allow_all_policy(workdir: Path) -> Path:
    policy = workdir / "rego"
    policy.mkdir(exist_ok=True)
    (policy / "p.rego").write_text(ALLOW_ALL)
    return policy


def start_hostile_http(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*HOSTILE, "--transport", "http", "--port", str(port)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            httpx2.get(f"http://127.0.0.1:{port}/mcp", timeout=0.5)
            return proc
        except httpx2.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the hostile HTTP upstream did not start")


LIMITS = f"max_message_bytes = {LIMIT}\nmax_server_requests = 4\ntimeout_s = 60\n"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway with the hostile upstream over HTTP and over stdio, and a well-behaved stdio echo beside them."""
    work = tmp_path_factory.mktemp("hostile")
    http_port, port = free_port(), free_port()
    upstream = start_hostile_http(http_port)
    upstreams = (
        f'[[upstreams]]\nname = "hhttp"\ntransport = "http"\nurl = "http://127.0.0.1:{http_port}/mcp"\n{LIMITS}\n'
        + stdio_upstream("hstdio", HOSTILE, LIMITS)
        + stdio_upstream("echo", ECHO)
    )
    gw = start_gateway(work, default_config(port, work, upstreams, policy=allow_all_policy(work)), port)
    try:
        yield gw
    finally:
        gw.stop()
        upstream.terminate()
        upstream.wait()


def text(result: types.CallToolResult) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


def outcome_of(gw: RunningGateway, tool: str) -> dict[str, Any]:
    """The outcome record of the latest decision on ``tool``."""
    records = gw.audit_records()
    decision = [r for r in records if r["type"] == "decision" and r.get("tool") == tool][-1]
    outcomes = [r for r in records if r["type"] == "outcome" and r["decision_id"] == decision["decision_id"]]
    assert len(outcomes) == 1, outcomes
    return outcomes[0]


def oversize_errors(gw: RunningGateway, server: str) -> float:
    for line in httpx2.get(gw.admin_base + "/metrics", timeout=5).text.splitlines():
        if (
            line.startswith("mcp_gateway_upstream_errors_total{")
            and f'server="{server}"' in line
            and 'kind="oversize"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


CASES = [
    ("hhttp", "huge", {"size": 50 * LIMIT}),  # a JSON body, streamed without Content-Length
    ("hhttp", "huge_sse", {"size": 50 * LIMIT}),  # one SSE event that ends, too late
    ("hhttp", "endless_event", {}),  # an SSE event whose data lines never end
    ("hhttp", "endless_line", {}),  # an SSE line without a newline, forever
    ("hstdio", "huge", {"size": 50 * LIMIT}),  # a stdio line too long
    ("hstdio", "endless_line", {}),  # a stdio line that never ends
]


@pytest.mark.parametrize(("server", "tool", "args"), CASES, ids=[f"{s}-{t}" for s, t, _ in CASES])
async def test_an_oversized_answer_is_cut_while_read_with_an_error_an_outcome_and_a_count(
    hostile: RunningGateway, server: str, tool: str, args: dict[str, Any]
) -> None:
    before = oversize_errors(hostile, server)
    rss_before = rss_kib(hostile.proc.pid)
    async with mcp_client(hostile.url, KEY) as c:
        with pytest.raises(Exception) as info:
            await c.call_tool(f"{server}__{tool}", args)
        message = str(info.value)
        assert f"over the limit of {LIMIT} bytes" in message, message
        assert "decision id" in message
        outcome = outcome_of(hostile, tool)
        assert outcome["outcome"] == "upstream_error" and outcome["error_kind"] == "oversize", outcome
        assert oversize_errors(hostile, server) == before + 1
        # The gateway never held the answer: far less than the 50 MiB the upstream meant to send.
        assert rss_kib(hostile.proc.pid) - rss_before < 40 * 1024
        # The gateway, the upstream and every other upstream go on.
        for name in (server, "echo"):
            deadline = time.monotonic() + 30
            while True:
                try:
                    r = await c.call_tool(f"{name}__echo", {"text": "still here"})
                    break
                except Exception:  # a stdio upstream that was stopped is being restarted
                    if time.monotonic() > deadline:
                        raise
                    await anyio.sleep(0.2)
            assert text(r) == "still here"


@asynccontextmanager
async def patient_client(url: str, key: str, **callbacks: Any) -> AsyncIterator[Client]:
    """A client that waits as long as a flood takes (mcp_client gives up after 30 s)."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=300)
    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None, **callbacks) as c:
        yield c


# Over HTTP every answer to the upstream is a POST (the fixture's own server is the slow side): fewer of them.
FLOODS = {"hhttp": 1000, "hstdio": 12000}


@pytest.mark.parametrize("server", ["hhttp", "hstdio"])
async def test_a_flood_of_server_requests_is_answered_in_bounds_while_other_agents_go_on(
    hostile: RunningGateway, server: str
) -> None:
    """A burst of requests: each gets an answer (in bounds) or a busy refusal (-32000); another agent's calls to
    another upstream are served meanwhile."""
    count = FLOODS[server]
    other: list[str] = []
    got: dict[str, str] = {}
    flood_done = anyio.Event()

    async def flood() -> None:
        try:
            async with patient_client(hostile.url, KEY) as c:
                got["flood"] = text(await c.call_tool(f"{server}__flood", {"count": count}))
        finally:
            flood_done.set()

    async def bystander() -> None:
        async with mcp_client(hostile.url, KEYS["admin"][2]) as c:
            while not flood_done.is_set():
                r = await c.call_tool("echo__echo", {"text": "meanwhile"})
                other.append(text(r))
                await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(flood)
        tg.start_soon(bystander)
    counts = dict(part.split("=") for part in got["flood"].split())
    answered, busy, errors = int(counts["answered"]), int(counts["busy"]), int(counts["errors"])
    assert answered + busy + errors == count, counts
    assert errors == 0 and busy > 0, counts
    assert other and set(other) == {"meanwhile"}


async def test_at_most_max_server_requests_reach_the_agent_the_rest_are_refused(tmp_path: Path) -> None:
    """A per-session upstream asks the agent for sampling 40 times at once; max_server_requests = 4: exactly 4
    reach the agent, 36 are refused with -32000 at once (unbounded, all 40 reached it)."""
    port = free_port()
    upstream = stdio_upstream("hstdio", HOSTILE, 'session_mode = "per_session"\nmax_server_requests = 4\n')
    gw = start_gateway(tmp_path, default_config(port, tmp_path, upstream, policy=allow_all_policy(tmp_path)), port)
    asked = 0

    async def sample(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        nonlocal asked
        asked += 1
        await anyio.sleep(2)  # still busy while the rest of the burst arrives
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="ok"),
            model="test-model",
            stop_reason="endTurn",
        )

    try:
        async with patient_client(gw.url, KEY, sampling_callback=sample) as c:
            r = await c.call_tool("hstdio__flood", {"count": 40, "method": "sampling/createMessage"})
        counts = dict(part.split("=") for part in text(r).split())
        assert counts == {"answered": "4", "busy": "36", "errors": "0"}, counts
        assert asked == 4
    finally:
        gw.stop()


MODERN = {
    "Authorization": f"Bearer {KEY}",
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "tools/call",
}


def modern_call(name: str) -> bytes:
    """A stateless (2026-07-28 era) tools/call, raw: the SDK client would not send a session id with it."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return orjson.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {}, "_meta": meta}}
    )


def children(pid: int, marker: str) -> set[int]:
    """Processes under ``pid`` (any depth) whose command line contains ``marker``."""
    found: set[int] = set()
    parents = {pid}
    for _ in range(3):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid in parents:
                parents.add(int(entry))
                if marker.encode() in cmdline:
                    found.add(int(entry))
    return found


def answer_of(r: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC answer in a JSON or SSE response."""
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
        return orjson.loads(data[-1])
    return orjson.loads(r.content)


LEGACY = {**MODERN, "MCP-Protocol-Version": "2025-11-25"}
del LEGACY["Mcp-Method"]


def open_legacy_session(url: str) -> str:
    """A 2025-era session opened raw (an SDK client would keep it busy with its listening stream)."""
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    }
    r = httpx2.post(url, headers=LEGACY, content=orjson.dumps(init), timeout=30)
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    r = httpx2.post(
        url,
        headers={**LEGACY, "Mcp-Session-Id": sid},
        timeout=30,
        content=orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    assert r.status_code == 202, r.text
    return sid


async def test_an_expired_session_never_gets_its_upstream_back(tmp_path: Path) -> None:
    """A per-session upstream's process stops when its session expires; a stateless (2026-era) tools/call that
    still carries the expired session's Mcp-Session-Id is refused and starts nothing."""
    port = free_port()
    upstream = stdio_upstream("echo", ECHO, 'session_mode = "per_session"\n')
    config = default_config(port, tmp_path, upstream, policy=allow_all_policy(tmp_path))
    config = config.replace("[server]\n", "[server]\nsession_idle_timeout_s = 2\n", 1)
    gw = start_gateway(tmp_path, config, port)
    try:
        sid = open_legacy_session(gw.url)
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo__pid", "arguments": {}}}
        r = httpx2.post(gw.url, headers={**LEGACY, "Mcp-Session-Id": sid}, content=orjson.dumps(call), timeout=30)
        pid = int(answer_of(r)["result"]["content"][0]["text"])
        assert pid in children(gw.proc.pid, "echo_server.py")
        deadline = time.monotonic() + 30
        while pid in children(gw.proc.pid, "echo_server.py"):  # the session expires, its process stops
            assert time.monotonic() < deadline, "the per-session process outlived its session"
            await anyio.sleep(0.2)
        before = children(gw.proc.pid, "echo_server.py")  # the started spare
        r = httpx2.post(
            gw.url,
            headers={**MODERN, "Mcp-Name": "echo__pid", "Mcp-Session-Id": sid},
            content=modern_call("echo__pid"),
            timeout=30,
        )
        assert "result" not in answer_of(r), r.text
        assert "agent session is not open" in r.text or "Session not found" in r.text, r.text
        await anyio.sleep(1)
        assert children(gw.proc.pid, "echo_server.py") <= before
    finally:
        gw.stop()


async def test_one_agent_cannot_take_every_per_session_connection(tmp_path: Path) -> None:
    """max_sessions_per_agent = 2: an agent's third session is refused the upstream; another agent still gets it."""
    port = free_port()
    upstream = stdio_upstream("echo", ECHO, 'session_mode = "per_session"\nmax_sessions_per_agent = 2\n')
    gw = start_gateway(tmp_path, default_config(port, tmp_path, upstream, policy=allow_all_policy(tmp_path)), port)
    try:
        async with mcp_client(gw.url, KEY) as a1, mcp_client(gw.url, KEY) as a2, mcp_client(gw.url, KEY) as a3:
            assert text(await a1.call_tool("echo__echo", {"text": "1"})) == "1"
            assert text(await a2.call_tool("echo__echo", {"text": "2"})) == "2"
            with pytest.raises(Exception) as info:
                await a3.call_tool("echo__echo", {"text": "3"})
            assert "limit of 2 sessions for one agent" in str(info.value), info.value
            async with mcp_client(gw.url, KEYS["admin"][2]) as b:
                assert text(await b.call_tool("echo__echo", {"text": "b"})) == "b"
    finally:
        gw.stop()


@pytest.mark.parametrize("server", ["hhttp", "hstdio"])
async def test_a_burst_of_list_changes_is_one_refresh_not_one_each(hostile: RunningGateway, server: str) -> None:
    """2,000 notifications/tools/list_changed in one burst: the gateway refreshes the list a few times, not 2,000
    (each was a task and a tools/list request, and an announcement to every agent session)."""

    async def lists(c: Any) -> int:
        return int(orjson.loads(text(await c.call_tool(f"{server}__stats", {})))["lists"])

    async with mcp_client(hostile.url, KEY) as c:
        before = await lists(c)
        assert text(await c.call_tool(f"{server}__list_flood", {"count": 2000})) == "flooded"
        seen, settled = await lists(c), 0
        while settled < 3:  # until the refreshes are over
            await anyio.sleep(0.5)
            now = await lists(c)
            settled = settled + 1 if now == seen else 0
            seen = now
    assert 1 <= seen - before < 50, seen - before


async def test_an_upstream_that_cannot_restart_is_named_without_the_exception_text(tmp_path: Path) -> None:
    """The agent learns that the upstream could not be started, not the OS error's text (a path, an errno)."""
    port = free_port()
    (tmp_path / "secret-dir").mkdir()
    upstream = stdio_upstream("echo", ECHO, 'cwd = "secret-dir"\ntimeout_s = 5\n')
    gw = start_gateway(tmp_path, default_config(port, tmp_path, upstream, policy=allow_all_policy(tmp_path)), port)
    try:
        async with mcp_client(gw.url, KEY) as c:
            assert text(await c.call_tool("echo__echo", {"text": "up"})) == "up"
            (tmp_path / "secret-dir").rmdir()  # its restart will fail in the OS, with a path in the error
            with pytest.raises(MCPError):  # the server exits mid-call
                await c.call_tool("echo__crash", {})
            with pytest.raises(Exception) as info:
                await c.call_tool("echo__echo", {"text": "down"})
        message = str(info.value)
        assert "could not be started" in message, message
        assert "secret-dir" not in message and "Errno" not in message, message
    finally:
        gw.stop()
