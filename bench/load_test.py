"""Load: many concurrent agent sessions of several agents, mixed allowed and denied calls, for a bounded time.

Starts a gateway (its own policy, audit on) in front of the echo fixture (shared session) and the recording
server (``session_mode = "per_session"``: one child process per agent session that uses it). Then:

1. a warm-up round (every session opens, calls, closes), after which the gateway's memory, file descriptors
   and child processes are the baseline;
2. two measured rounds of ``--sessions`` concurrent sessions for ``--seconds`` each: every session loops over an
   allowed call, a denied call (a destructive tool) and, for every fifth session, a call to its own per-session
   upstream; errors are anything but the expected result or the expected denial;
3. after each round, once the sessions have closed: memory, descriptors and child processes against the
   baseline (growth between the two rounds is what a leak looks like);
4. graceful shutdown: calls in flight (2 s each) when the gateway gets SIGTERM must finish, and every one of
   their decisions must have its outcome in the audit log.

    python bench/load_test.py [--sessions 200] [--seconds 15] [--agents 8] [--policy-timeout-ms 200]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import ECHO, free_port, start_gateway, stdio_upstream  # noqa: E402

RECORDER = [sys.executable, str(REPO / "tests" / "fixtures" / "recording_server.py")]
POLICY = """package gateway
import rego.v1

default decision := {"allow": false, "reasons": ["not an api key"]}

destructive_call if {
	input.action == "tools/call"
	input.annotations.destructiveHint
}

decision := {"allow": true, "reasons": []} if {
	input.agent.auth == "api_key"
	not destructive_call
}

decision := {"allow": false, "reasons": ["destructive tools are not allowed under load"]} if {
	input.agent.auth == "api_key"
	destructive_call
}
"""


def agent_key(i: int) -> str:
    return f"load-agent-key-{i}"


def config(port: int, workdir: Path, agents: int, policy_timeout_ms: int) -> str:
    keys = "\n".join(
        f'[[identity.api_keys]]\nagent = "agent-{i}"\nteam = "{"alpha" if i % 2 else "beta"}"\nroles = []\n'
        f'sha256 = "{hashlib.sha256(agent_key(i).encode()).hexdigest()}"\n'
        for i in range(agents)
    )
    upstreams = stdio_upstream("echo", ECHO) + stdio_upstream(
        "rec", RECORDER, 'session_mode = "per_session"\nenv = { RECORD_FILE = "/dev/null" }\n'
    )
    return (
        f'[server]\nlisten = "127.0.0.1:{port}"\nmax_sessions = 100000\n\n{keys}\n'
        f'[policy]\npath = "{workdir / "rego"}"\ntimeout_ms = {policy_timeout_ms}\n\n'
        f'[audit]\npath = "{workdir / "audit.jsonl"}"\n\n{upstreams}'
    )


@dataclass
class Tally:
    allowed: int = 0
    denied: int = 0
    per_session: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    sessions: int = 0

    def error(self, what: str) -> None:
        if len(self.errors) < 2000:
            self.errors.append(what)


class RawSession:
    """A real MCP session over plain HTTP (initialize, initialized, calls, DELETE): a load generator light enough
    that 200 of them in one process measure the gateway, not the client library."""

    def __init__(self, http: httpx2.AsyncClient, url: str, key: str):
        self.http, self.url = http, url
        self.headers = {
            "Authorization": f"Bearer {key}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        self.ids = 0

    async def post(self, method: str, params: dict[str, Any] | None = None, notify: bool = False) -> Any:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        if not notify:
            self.ids += 1
            msg["id"] = self.ids
        resp = await self.http.post(self.url, content=orjson.dumps(msg), headers=self.headers)
        if notify:
            return None
        if resp.status_code != 200:
            raise RuntimeError(f"{method}: HTTP {resp.status_code} {resp.text[:200]}")
        body = resp.content
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            body = b"".join(line[5:] for line in body.splitlines() if line.startswith(b"data:"))
        answer = orjson.loads(body)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        if "mcp-session-id" in resp.headers:
            self.headers["Mcp-Session-Id"] = resp.headers["mcp-session-id"]
        return answer["result"]

    async def open(self) -> None:
        await self.post(
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "load", "version": "1"}},
        )
        await self.post("notifications/initialized", notify=True)

    async def close(self) -> None:
        await self.http.delete(self.url, headers=self.headers)

    async def call(self, name: str, arguments: dict[str, Any]) -> tuple[bool, str]:
        result = await self.post("tools/call", {"name": name, "arguments": arguments})
        content = result.get("content") or [{}]
        return bool(result.get("isError")), str(content[0].get("text", ""))


async def session(http: httpx2.AsyncClient, url: str, key: str, index: int, deadline: float, tally: Tally) -> None:
    s = RawSession(http, url, key)
    try:
        await s.open()
        tally.sessions += 1
        try:
            n = 0
            while True:
                n += 1
                t0 = time.perf_counter()
                failed, text = await s.call("echo__echo", {"text": f"s{index}-{n}"})
                tally.latencies.append(time.perf_counter() - t0)
                if failed or text != f"s{index}-{n}":
                    tally.error(f"allowed call answered wrongly: {text}")
                else:
                    tally.allowed += 1
                failed, text = await s.call("echo__delete_everything", {"path": "/"})
                if failed and "Denied by policy" in text:
                    tally.denied += 1
                else:
                    tally.error(f"denied call answered wrongly: {text}")
                if index % 5 == 0:
                    failed, text = await s.call("rec__echo", {"text": "mine"})
                    if failed or text != "mine":
                        tally.error(f"per-session call answered wrongly: {text}")
                    else:
                        tally.per_session += 1
                if time.monotonic() > deadline:
                    return
        finally:
            await s.close()
    except Exception as exc:
        tally.error(f"session {index}: {exc.__class__.__name__}: {exc}")


async def round_of(url: str, sessions: int, agents: int, seconds: float) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + seconds
    limiter = anyio.CapacityLimiter(sessions)

    limits = httpx2.Limits(max_connections=sessions, max_keepalive_connections=sessions)
    async with httpx2.AsyncClient(timeout=60, limits=limits) as http:

        async def one(i: int) -> None:
            async with limiter:
                await session(http, url, agent_key(i % agents), i, deadline, tally)

        async with anyio.create_task_group() as tg:
            for i in range(sessions):
                tg.start_soon(one, i)
    return tally


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def snapshot(pid: int) -> dict[str, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return {"rss_kb": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")), "children": len(descendants(pid))}


def settle(pid: int, baseline: dict[str, int], timeout: float = 20.0) -> dict[str, int]:
    """Per-session upstreams close with their sessions; give them a moment before measuring."""
    deadline = time.monotonic() + timeout
    snap = snapshot(pid)
    while time.monotonic() < deadline and (snap["children"] > baseline["children"] or snap["fds"] > baseline["fds"]):
        time.sleep(0.25)
        snap = snapshot(pid)
    return snap


def report(name: str, tally: Tally, seconds: float, snap: dict[str, int], base: dict[str, int]) -> None:
    lat = sorted(tally.latencies) or [0.0]
    calls = tally.allowed + tally.denied + tally.per_session
    print(f"\n{name}: {tally.sessions} sessions opened, {calls} calls in {seconds:.1f} s ({calls / seconds:.0f}/s)")
    print(f"  allowed {tally.allowed}, denied as expected {tally.denied}, per-session upstream {tally.per_session}")
    print(
        f"  allowed-call latency under load: p50 {statistics.median(lat) * 1000:.1f} ms, "
        f"p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms"
    )
    print(f"  errors beyond the denials: {len(tally.errors)}")
    for err in tally.errors[:5]:
        print(f"    {err[:300]}")
    grew = (snap["rss_kb"] - base["rss_kb"]) / 1024
    print(
        f"  after the sessions closed: rss {snap['rss_kb'] / 1024:.1f} MiB ({grew:+.1f}),"
        f" fds {snap['fds']} ({snap['fds'] - base['fds']:+d}), child processes {snap['children']}"
        f" ({snap['children'] - base['children']:+d})"
    )


async def drain_on_shutdown(url: str, pid: int, audit: Path, calls: int, agents: int) -> tuple[int, int, int]:
    """SIGTERM with calls in flight: how many completed, and do all their decisions have outcomes?"""
    done = 0

    async def slow(http: httpx2.AsyncClient, s: RawSession) -> None:
        nonlocal done
        try:
            failed, _ = await s.call("echo__slow", {"seconds": 2})
            done += 0 if failed else 1
        except Exception as exc:
            print(f"  a call in flight at shutdown failed: {exc}")

    async with httpx2.AsyncClient(timeout=30) as http:
        sessions = [RawSession(http, url, agent_key(i % agents)) for i in range(calls)]
        for s in sessions:
            await s.open()
        async with anyio.create_task_group() as tg:
            for s in sessions:
                tg.start_soon(slow, http, s)
            await anyio.sleep(0.8)
            os.kill(pid, signal.SIGTERM)
    records = [orjson.loads(line) for line in audit.read_bytes().splitlines() if line.strip()]
    slow_ids = {r["decision_id"] for r in records if r["type"] == "decision" and r.get("tool") == "slow"}
    outcomes = {r["decision_id"] for r in records if r["type"] == "outcome"}
    return done, len(slow_ids), len(slow_ids - outcomes)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--agents", type=int, default=8)
    p.add_argument("--policy-timeout-ms", type=int, default=200, help="policy.timeout_ms (the shipped default: 200)")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gw-load-"))
    (workdir / "rego").mkdir()
    (workdir / "rego" / "p.rego").write_text(POLICY)
    port = free_port()
    gw = start_gateway(workdir, config(port, workdir, args.agents, args.policy_timeout_ms), port)
    pid = gw.proc.pid
    url = gw.url
    try:
        print(
            f"gateway pid {pid}, {args.sessions} concurrent sessions of {args.agents} agents, "
            f"{args.seconds:g} s per round; workdir {workdir}"
        )
        anyio.run(round_of, url, args.sessions, args.agents, 2.0)
        time.sleep(3)  # the warm-up's per-session upstreams close with their sessions (a started spare stays)
        base = snapshot(pid)
        print(
            f"baseline after warm-up: rss {base['rss_kb'] / 1024:.1f} MiB, fds {base['fds']}, "
            f"child processes {base['children']}"
        )
        failures = 0
        rounds = []
        for n in (1, 2):
            t0, cpu0 = time.monotonic(), cpu_seconds(pid)
            tally = anyio.run(round_of, url, args.sessions, args.agents, args.seconds)
            elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
            snap = settle(pid, base)
            report(f"round {n}", tally, elapsed, snap, base)
            calls = tally.allowed + tally.denied + tally.per_session
            print(
                f"  gateway CPU: {cpu:.1f} s for the round, {cpu / max(calls, 1) * 1000:.2f} ms per call "
                f"(sessions opened and closed included)"
            )
            rounds.append(snap)
            failures += len(tally.errors)
        growth = (rounds[1]["rss_kb"] - rounds[0]["rss_kb"]) / 1024
        leaked_fds = rounds[1]["fds"] - base["fds"]
        leaked_children = rounds[1]["children"] - base["children"]
        print(
            f"\nmemory growth from round 1 to round 2: {growth:+.1f} MiB; fds left over: {leaked_fds:+d}; "
            f"child processes left over: {leaked_children:+d}"
        )
        ready = httpx2.get(gw.admin_base + "/readyz").json()
        print(f"readyz after the rounds: ready={ready['ready']}")
        kids = descendants(pid)
        completed, in_flight, missing = anyio.run(drain_on_shutdown, url, pid, gw.audit, 20, args.agents)
        gw.proc.wait(30)
        time.sleep(0.5)
        survivors = [k for k in kids if Path(f"/proc/{k}").exists()]
        print(
            f"graceful shutdown: {completed} of 20 calls in flight completed; {in_flight} decisions recorded, "
            f"{missing} without an outcome; gateway exit code {gw.proc.returncode}; "
            f"upstream processes left running: {len(survivors)}"
        )
        ok = (
            failures == 0
            and leaked_children <= 0
            and leaked_fds <= 2
            and completed == 20
            and missing == 0
            and not survivors
        )
        print("RESULT: " + ("ok" if ok else "PROBLEMS (see above)"))
        return 0 if ok else 1
    finally:
        gw.stop()


if __name__ == "__main__":
    sys.exit(main())
