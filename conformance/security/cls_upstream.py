"""Hostile upstream: a tool server is not trusted any more than an agent is.

The fixture upstream (``tests/fixtures/sec_upstream.py``) answers over HTTP with a 200 MB JSON body, a 200 MB SSE
event that never ends, a 200 MB SSE line without a newline, over stdio with a 100 MB line, and floods the
gateway with 12,000 server-to-client requests during one call. Promises: the gateway reads within bounds (its
memory grows far less than the payload), the agent gets an error, the outcome is on record, other agents are
still served, and the upstream works again afterwards. A per-session upstream ends with its session and is not
started again by a request naming the expired session.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx2

from conformance.security.framework import (
    FIXTURE,
    Gateway,
    Raw,
    attempt,
    control,
    hold,
    key,
    ok_result,
    result_text,
    sec_upstream,
    wait_until,
)
from conformance.security.framework import start as launch
from tests.conftest import free_port

CLS = "upstream"
PAYLOAD_MB = 200
MAX_GROWTH_MB = 150


@dataclass
class Ctx:
    g: Gateway
    http_fixture: subprocess.Popen[bytes]
    work: Path
    notes: list[str] = field(default_factory=list)

    def stop(self) -> None:
        self.g.stop()
        self.http_fixture.terminate()
        self.http_fixture.wait(10)


def start(work: Path) -> Ctx:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    fixture = subprocess.Popen(
        [*FIXTURE, "--name", "hose", "--http", str(port)], env={**os.environ, "RECORD_FILE": str(work / "hose.rec")}
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx2.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
            break
        except httpx2.HTTPError:
            time.sleep(0.1)
    ups = (
        sec_upstream("hose", work, "timeout_s = 60\n", http_port=port)
        + sec_upstream("pub", work)
        + sec_upstream("mine", work, 'session_mode = "per_session"\n')
    )
    try:
        g = launch(work, ups, server={"session_idle_timeout_s": 3})
    except Exception:
        fixture.terminate()
        raise
    return Ctx(g, fixture, work)


def outcomes(g: Gateway, before: int) -> list[str]:
    return [str(r.get("outcome")) for r in g.audit()[before:] if r.get("type") == "outcome"]


def hostile(aid: str, title: str, server: str, tool: str, mb: int) -> None:
    async def run(ctx: Ctx) -> str:
        g = ctx.g
        async with Raw(g, timeout=180) as raw:
            sid = await raw.open("alice")
            r = await raw.tool("alice", sid, f"{server}__echo", {"text": "before"})
            control(ok_result(r), f"{server}__echo failed before: {result_text(r)[:100]}")
            rss0 = g.rss_mb()
            before = len(g.audit())
            peak = rss0
            done = anyio.Event()
            answer: list[httpx2.Response] = []

            async def call() -> None:
                try:
                    answer.append(await raw.tool("alice", sid, f"{server}__{tool}", {"mb": mb}))
                finally:
                    done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                while not done.is_set():
                    peak = max(peak, g.rss_mb())
                    await anyio.sleep(0.05)
            r = answer[0]
            grew = peak - rss0
            hold(g.alive(), "the gateway stopped serving")
            hold(not ok_result(r), f"the agent got a {len(r.content)}-byte result")
            hold(grew < MAX_GROWTH_MB, f"the gateway's memory grew {grew:.0f} MB for a {mb} MB answer")
            outs = outcomes(g, before)
            hold(any(o != "ok" for o in outs), f"no failed outcome on record ({outs})")
            sid2 = await raw.open("bob")
            r2 = await raw.tool("bob", sid2, f"{server}__echo", {"text": "after"})
            hold(ok_result(r2), f"{server} does not work afterwards: {result_text(r2)[:100]}")
        return f"error to the agent ({result_text(r)[:60]}); memory +{grew:.0f} MB; outcome {outs[-1]}"

    attempt(CLS, aid, title)(run)


hostile("http-huge-body", f"a {PAYLOAD_MB} MB JSON body is cut while read", "hose", "huge", PAYLOAD_MB)
hostile("http-endless-event", f"a {PAYLOAD_MB} MB SSE event that never ends is cut", "hose", "endless", PAYLOAD_MB)
hostile("http-line-no-newline", f"a {PAYLOAD_MB} MB SSE line without a newline is cut", "hose", "noline", PAYLOAD_MB)
hostile("stdio-huge-line", "a 100 MB stdio line is cut", "pub", "huge", 100)


async def stateless_pid_call(raw: Raw, agent: str, sid: str) -> httpx2.Response:
    """A 2026-era (stateless) call of mine__pid that names session ``sid`` in its header."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {
                "name": "mine__pid",
                "arguments": {},
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientInfo": {"name": "s", "version": "1"},
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
            },
        }
    ).encode()
    h = {
        "Authorization": f"Bearer {key(agent)}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Mcp-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "mine__pid",
        "Mcp-Session-Id": sid,
    }
    return await raw.http.post(raw.g.url, content=body, headers=h)


@attempt(CLS, "s2c-flood", "12,000 server-to-client requests in one call do not stop another agent's calls")
async def s2c_flood(ctx: Ctx) -> str:
    g = ctx.g
    lat: list[float] = []
    bob_ok: list[bool] = []
    flood: list[httpx2.Response] = []
    async with Raw(g, timeout=120) as araw, Raw(g, timeout=120) as braw:
        asid, bsid = await araw.open("alice"), await braw.open("bob")
        r = await braw.tool("bob", bsid, "pub__echo", {"text": "calm"})
        control(ok_result(r), "bob's call failed with no load")

        async def flooder() -> None:
            with anyio.move_on_after(60):
                flood.append(await araw.tool("alice", asid, "hose__flood", {"count": 12000}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(flooder)
            await anyio.sleep(0.3)
            for _ in range(20):
                t0 = time.perf_counter()
                try:
                    with anyio.fail_after(15):  # a liveness bound, not a timing assert: a stalled call fails
                        r = await braw.tool("bob", bsid, "pub__echo", {"text": "busy"})
                    bob_ok.append(ok_result(r))
                except TimeoutError:
                    bob_ok.append(False)
                lat.append(time.perf_counter() - t0)
                if not bob_ok[-1]:
                    tg.cancel_scope.cancel()  # judged already: do not wait for the flood to drain
                    break
    hold(all(bob_ok), f"bob's call {len(bob_ok)} of 20 failed or stalled 15 s during the flood")
    hold(g.alive(), "the gateway stopped serving")
    refused = sum(1 for line in g.record("hose") if b'"error"' in line and b"flood-" in line)
    lat.sort()
    flooded = f"the flooding call got HTTP {flood[0].status_code}" if flood else "the flooding call took over 60 s"
    return f"bob served (median {lat[len(lat) // 2] * 1000:.0f} ms); {refused} flood requests refused; {flooded}"


def live_mine(work: Path) -> list[int]:
    """Process ids of the per-session fixture ``mine`` of this class."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if b"--name" in cmd and b"mine" in cmd and str(work).encode() in env:
            out.append(int(pid))
    return out


@attempt(
    CLS,
    "per-session-after-expiry",
    "a per-session upstream ends with its session; a 2026-era call naming the expired session starts none",
)
async def after_expiry(ctx: Ctx) -> str:
    g = ctx.g
    baseline = set(live_mine(ctx.work))  # the gateway's own instance (its catalogue), not a session's
    async with Raw(g) as raw:
        sid = await raw.open("alice")
        r = await raw.tool("alice", sid, "mine__pid", {})
        control(ok_result(r), f"mine__pid failed: {result_text(r)[:100]}")
        pid = int(result_text(r))
        control(pid in live_mine(ctx.work), "the per-session upstream's process is not to be seen")
        hold(
            await anyio.to_thread.run_sync(lambda: wait_until(lambda: pid not in live_mine(ctx.work), 20)),
            f"the session's upstream process {pid} outlived its session by 20 s",
        )
        # One started spare per stdio upstream waits for the next session (gateway/upstream_sessions.py): it is
        # no session's, but more than one left over would be.
        left = set(live_mine(ctx.work)) - baseline
        hold(len(left) <= 1, f"{len(left)} upstream processes left after the session ended (pids {sorted(left)})")
        baseline |= left
        r = await stateless_pid_call(raw, "alice", sid)
        await anyio.sleep(2)
        alive = sorted(set(live_mine(ctx.work)) - baseline)
        hold(
            not alive,
            f"a call naming the expired session started an upstream (pids {alive}; HTTP {r.status_code} "
            f"{result_text(r)[:40]})",
        )
    return f"ended with its session; the late call got HTTP {r.status_code}, nothing started"


@attempt(
    CLS,
    "per-session-cross-agent",
    "a 2026-era call naming another agent's live session does not reach that session's upstream",
)
async def cross_agent_session(ctx: Ctx) -> str:
    g = ctx.g
    async with Raw(g) as raw:
        sid = await raw.open("alice")
        r = await raw.tool("alice", sid, "mine__pid", {})
        control(ok_result(r), f"mine__pid failed: {result_text(r)[:100]}")
        pid = int(result_text(r))
        r = await stateless_pid_call(raw, "bob", sid)
        r2 = await raw.tool("alice", sid, "mine__pid", {})  # keeps alice's session alive and checks it
        control(ok_result(r2), "alice's session lost its upstream")
    hold(result_text(r).strip() != str(pid), "bob's call ran in alice's per-session upstream")
    return f"HTTP {r.status_code}; not alice's upstream"
