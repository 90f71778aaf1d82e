"""Resource abuse: one agent, even one with no grants at all, cannot take the gateway or other agents down.

Attempts: an agent opening sessions past its cap (another agent still opens one); an agent with many calls in
flight (past its cap it gets a clear refusal, another agent is still served); 1,100 half-sent request heads
against a gateway limited to 1,024 file descriptors (slowloris: the gateway stays up and serves again within its
header timeout); and a zero-grant agent sending 16 calls with 18,000-key arguments at once (another agent's
allowed calls are still allowed, not turned into "policy evaluation failed").
"""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2

from conformance.security.framework import (
    Gateway,
    Raw,
    attempt,
    control,
    headers,
    hold,
    need,
    ok_result,
    result_text,
    sec_upstream,
)
from conformance.security.framework import start as launch

CLS = "abuse"
NOFILE = 1024
SETTINGS = {"max_sessions": 20, "max_sessions_per_agent": 4, "max_concurrent_calls_per_agent": 4}


@dataclass
class Ctx:
    g: Gateway

    def stop(self) -> None:
        self.g.stop()


def limit_when_started(config: Path, stop: threading.Event) -> None:
    """Give the gateway process that reads ``config`` a 1,024-descriptor limit (soft and hard, as a host with
    ``ulimit -n 1024`` would) as soon as it exists, long before it has imported enough to look at its limits.
    A process-wide setrlimit around the start would race the other classes' gateways, started meanwhile."""
    needle = str(config).encode()
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                    resource.prlimit(int(pid), resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
                    return
            except OSError:
                continue
        time.sleep(0.005)


def start(work: Path) -> Ctx:
    own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (own_hard, own_hard))  # the attacker needs 1,100 sockets
    stop = threading.Event()
    watcher = threading.Thread(target=limit_when_started, args=(work / "gateway.toml", stop), daemon=True)
    watcher.start()
    try:
        g = launch(work, sec_upstream("pub", work), server=SETTINGS)
    finally:
        stop.set()
        watcher.join()
    limit = resource.prlimit(g.gw.proc.pid, resource.RLIMIT_NOFILE)
    if limit[1] != NOFILE:
        g.stop()
        raise RuntimeError(f"the gateway's descriptor limit is {limit}, not {NOFILE}")
    return Ctx(g)


@attempt(CLS, "session-cap", "an agent opening 30 sessions (max_sessions 20) does not lock another agent out")
async def session_cap(ctx: Ctx) -> str:
    g = ctx.g
    need(g, "max_sessions_per_agent")
    async with Raw(g) as raw:
        await raw.open("alice")
        init = (
            b'{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", '
            b'"capabilities": {}, "clientInfo": {"name": "z", "version": "1"}}}'
        )
        statuses = []
        for _ in range(30):
            r = await raw.http.post(g.url, content=init, headers=headers("zero"))
            statuses.append(r.status_code)
            if "mcp-session-id" in r.headers:
                raw.opened.append(("zero", r.headers["mcp-session-id"], "/mcp"))  # ended when the attempt ends
        control(statuses[0] == 200, f"zero could not open even one session: {statuses[0]}")
        r = await raw.http.post(g.url, content=init, headers=headers("alice"))
        if "mcp-session-id" in r.headers:
            raw.opened.append(("alice", r.headers["mcp-session-id"], "/mcp"))
        hold(r.status_code == 200, f"alice got HTTP {r.status_code} after zero's 30 sessions")
        refusals = [s for s in statuses if s != 200]
        hold(refusals, "zero was never refused (no per-agent cap)")
        hold(all(s in (429, 503) for s in refusals), f"zero's refusals: {sorted(set(refusals))}")
    return f"zero got {statuses.count(200)} sessions then {sorted(set(refusals))}; alice served"


@attempt(CLS, "concurrent-cap", "an agent with 12 calls in flight is capped, another agent is still served")
async def concurrent_cap(ctx: Ctx) -> str:
    g = ctx.g
    need(g, "max_concurrent_calls_per_agent")
    results: list[bool] = []
    texts: list[str] = []
    async with Raw(g) as raw, Raw(g) as braw:
        sid = await raw.open("alice")
        bsid = await braw.open("bob")
        r = await braw.tool("bob", bsid, "pub__echo", {"text": "before"})
        control(ok_result(r), "bob's call failed with no load")

        async def slow() -> None:
            r = await raw.tool("alice", sid, "pub__sleep", {"seconds": 3})
            results.append(ok_result(r))
            texts.append(f"{r.status_code} {result_text(r)[:60]}")

        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(slow)
            await anyio.sleep(0.8)
            r = await braw.tool("bob", bsid, "pub__echo", {"text": "during"})
            bob_ok = ok_result(r)
    hold(bob_ok, f"bob's call failed while alice had 12 calls in flight: {result_text(r)[:100]}")
    control(any(results), "none of alice's calls succeeded")
    hold(not all(results), "all 12 of alice's calls ran at once (no per-agent cap)")
    return f"alice {results.count(True)} ran, {results.count(False)} refused ({texts[-1]}); bob served"


def slowloris(
    port: int, count: int, stop: threading.Event, opened: list[socket.socket], errors: list[str], peak: list[int]
) -> None:
    """Half-sent request heads that trickle a header line every 2 s and never finish (those the server closes
    are not reopened: the attempt is about what one burst of them does)."""
    for _ in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
            opened.append(s)
            peak[0] = max(peak[0], len(opened))
        except OSError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    while not stop.wait(2):
        for s in list(opened):
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                opened.remove(s)


def fds(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return -1


@attempt(CLS, "slowloris", "1,100 half-sent heads on a 1,024-fd gateway: it stays up and serves again within 30 s")
async def slow_heads(ctx: Ctx) -> str:
    g = ctx.g
    port = g.gw.port
    body = (
        b'{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", '
        b'"capabilities": {}, "clientInfo": {"name": "a", "version": "1"}}}'
    )

    def served() -> bool:
        try:
            r = httpx2.post(g.url, content=body, headers=headers("alice"), timeout=3)
            if "mcp-session-id" in r.headers:  # end it: alice's sessions are capped too
                httpx2.delete(g.url, headers=headers("alice", r.headers["mcp-session-id"]), timeout=3)
            return r.status_code == 200
        except httpx2.HTTPError:
            return False

    control(served(), "alice was not served before the attack")
    stop, opened, errors, held = threading.Event(), [], [], [0]
    t = threading.Thread(target=slowloris, args=(port, 1100, stop, opened, errors, held), daemon=True)
    t.start()
    peak = 0
    ok = False
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            peak = max(peak, fds(g.gw.proc.pid))
            if held[0] >= 1000 and served():
                ok = True
                break
            await anyio.sleep(0.5)
    finally:
        stop.set()
        t.join(10)
        for s in opened:
            s.close()
    control(held[0] >= 1000, f"only {held[0]} half-sent heads were open at once ({len(errors)} failed: {errors[:1]})")
    hold(g.gw.proc.poll() is None, "the gateway died")
    hold(peak < NOFILE, f"the gateway ran out of file descriptors ({peak} of {NOFILE} open)")
    hold(ok, f"alice was not served within 30 s of 1,100 half-sent heads (gateway fds peaked at {peak})")
    hold(served(), "alice was not served after the attack")
    return f"served during the attack; gateway fds peaked at {peak}"


@attempt(
    CLS,
    "zero-grant-huge-args",
    "a zero-grant agent's 16 calls with 18,000-key arguments do not fail another agent's decisions",
)
async def zero_grant_flood(ctx: Ctx) -> str:
    g = ctx.g
    huge = {f"k{i}": i for i in range(18000)}
    alice_results: list[tuple[bool, str]] = []
    async with Raw(g, timeout=120) as zraw, Raw(g, timeout=120) as araw:
        asid = await araw.open("alice")
        for _ in range(2):
            r = await araw.tool("alice", asid, "pub__echo", {"text": "calm"})
            control(ok_result(r), f"alice's call failed with no load: {result_text(r)[:80]}")
        zsids = [await zraw.open("zero") for _ in range(4)]

        async def zero_call(i: int) -> None:
            await zraw.tool("zero", zsids[i % len(zsids)], "pub__echo", huge)

        async def alice_call() -> None:
            r = await araw.tool("alice", asid, "pub__echo", {"text": "busy"})
            alice_results.append((ok_result(r), result_text(r)[:80]))

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(zero_call, i)
            await anyio.sleep(0.3)
            for _ in range(6):  # one after another: alice stays within her own cap of calls in flight
                await alice_call()
    failed = [t for ok, t in alice_results if not ok]
    hold(not failed, f"{len(failed)} of alice's 6 allowed calls failed: {failed[:1]}")
    return "alice's 6 calls allowed"
