"""Per-call cost of the fleet path against a single gateway, side by side, on one machine.

Starts redis-server, two gateway replicas with ``[fleet]`` and a ``[[limits]]`` entry matching the bench agent
(so every call takes the Redis round trip), a single gateway without either, and two nginx instances from
``deploy/nginx/mcp-gateway.conf`` (round robin, and hashing on Authorization). The same SDK client (2025-era
sessions, a stdio echo upstream) measures, interleaved: the single gateway; the agent's owner replica directly
(Redis, no hop); the other replica directly (every call forwarded: Redis and the hop); both nginx variants. Then
calls/s with concurrent sessions through each, the Redis round trip of the limit script alone, and Redis
operations per call (``INFO commandstats`` deltas over the owner-direct run).

    python bench/fleet_bench.py [--calls 200] [--seconds 3] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from fleet_support import start_nginx, start_redis, start_replica  # noqa: E402

from gateway.fleet.limits import _SCRIPT  # noqa: E402
from gateway.fleet.membership import Member, rendezvous  # noqa: E402
from tests.conftest import (  # noqa: E402
    ECHO,
    KEYS,
    default_config,
    free_port,
    mcp_client,
    start_gateway,
    stdio_upstream,
)

AGENT = "ci-bot"
LIMIT = """
[[limits]]
name = "bench"
agents = ["ci-bot"]
calls_per_second = 100000
burst = 100000
"""


KEY = KEYS[AGENT][2]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


async def latency(targets: dict[str, tuple[str, str]], calls: int, mode: str) -> dict[str, list[float]]:
    """Sequential calls, one session per path, interleaved call by call so the host's noise hits every path."""
    out: dict[str, list[float]] = {name: [] for name in targets}
    opened = [mcp_client(url, KEY, mode) for url, _ in targets.values()]
    clients = [await cm.__aenter__() for cm in opened]
    try:
        for c, (_, tool) in zip(clients, targets.values(), strict=True):
            for _ in range(20):
                await c.call_tool(tool, {"text": "warm"})
        for _ in range(calls):
            for name, c, (_, tool) in zip(targets, clients, targets.values(), strict=True):
                t0 = time.perf_counter()
                r = await c.call_tool(tool, {"text": "hello"})
                out[name].append(time.perf_counter() - t0)
                assert not r.is_error, r
    finally:
        for cm in reversed(opened):
            await cm.__aexit__(None, None, None)
    return out


async def throughput(url: str, tool: str, concurrency: int, seconds: float, mode: str) -> float:
    done = 0
    ready = anyio.Event()

    async def worker() -> None:
        nonlocal done
        async with mcp_client(url, KEY, mode) as c:
            await c.call_tool(tool, {"text": "warm"})
            await ready.wait()
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                await c.call_tool(tool, {"text": "hello"})
                done += 1

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
        await anyio.sleep(1.0)
        t0 = time.perf_counter()
        ready.set()
    return done / (time.perf_counter() - t0)


def commandstats(r: redis.Redis) -> dict[str, int]:
    return {k: int(v["calls"]) for k, v in r.info("commandstats").items()}


async def redis_round_trip(port: int, n: int) -> list[float]:
    import redis.asyncio as aioredis

    client = aioredis.Redis(port=port)
    script = client.register_script(_SCRIPT)
    args = [1, "d", "rate", "100000.0", "100000.0"]
    out = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        await script(keys=[f"bench:rt:{i % 7}"], args=args)
        if i >= 20:
            out.append(time.perf_counter() - t0)
    await client.aclose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    procs: list = []
    try:
        rds = start_redis(work / "redis")
        procs.append(rds)
        ports = {"r1": free_port(), "r2": free_port()}
        rr = start_nginx(work / "nginx-rr", list(ports.values()))
        procs.append(rr)
        aff = start_nginx(work / "nginx-aff", list(ports.values()), affinity="hash $http_authorization consistent;")
        procs.append(aff)
        hosts = [f"127.0.0.1:{p}" for p in [rr.port, aff.port, *ports.values()]]
        upstream = stdio_upstream("echo", ECHO)
        replicas = {}
        for rid, port in ports.items():
            # a heartbeat every 30 s: none falls inside the measured runs (Redis operations per call stay exact)
            replicas[rid] = start_replica(
                work / rid, rid, port, rds.port, hosts, extra=LIMIT, heartbeat_s=30, upstreams=upstream
            )
            procs.append(replicas[rid])
        single_port = free_port()
        single = start_gateway(work / "single", default_config(single_port, work / "single", upstream), single_port)
        procs.append(single)
        members = [Member(rid, f"http://127.0.0.1:{p}") for rid, p in ports.items()]
        owner = rendezvous(AGENT, members)
        assert owner is not None
        other = next(m for m in members if m.id != owner.id)
        time.sleep(2)  # every replica has seen the other's heartbeat
        targets = {
            "single gateway": (single.url, "echo__echo"),
            "fleet: owner direct": (f"{owner.url}/mcp", "echo__echo"),
            "fleet: other (hop)": (f"{other.url}/mcp", "echo__echo"),
            "nginx round robin": (f"http://127.0.0.1:{rr.port}/mcp", "echo__echo"),
            "nginx hash(Authorization)": (f"http://127.0.0.1:{aff.port}/mcp", "echo__echo"),
        }
        print(
            f"fleet bench: {args.calls} sequential calls per path (interleaved, 2025-era sessions, stdio echo), "
            f"{args.concurrency} sessions x {args.seconds:g} s for throughput"
        )
        lat = anyio.run(latency, targets, args.calls, "legacy")
        tput = {
            name: anyio.run(throughput, url, tool, args.concurrency, args.seconds, "legacy")
            for name, (url, tool) in targets.items()
        }
        base = pct(lat["single gateway"], 0.5)
        print(f"{'path':28} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'calls/s':>9}")
        for name in targets:
            p50, p99 = pct(lat[name], 0.5), pct(lat[name], 0.99)
            print(f"{name:28} {p50:8.2f} {p99:8.2f} {p50 - base:+8.2f} {tput[name]:9.0f}")
        rt = asyncio.run(redis_round_trip(rds.port, 1000))
        print(f"Redis limit script alone: p50 {pct(rt, 0.5):.3f} ms, p99 {pct(rt, 0.99):.3f} ms")
        client = redis.Redis(port=rds.port)
        before = commandstats(client)
        n = 100
        anyio.run(latency, {"owner": (f"{owner.url}/mcp", "echo__echo")}, n, "legacy")
        after = commandstats(client)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        delta = {k: v for k, v in delta.items() if v > 0}
        # latency() also makes 20 warm-up calls, each a tools/call; the session's own requests are counted too
        calls = n + 20
        trips = delta.get("cmdstat_evalsha", 0) + delta.get("cmdstat_eval", 0)
        inner = sum(v for k, v in delta.items() if k not in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_info"))
        print(
            f"Redis per tools/call: {trips / calls:.2f} round trips (EVALSHA), {inner / calls:.2f} commands inside "
            f"scripts; over the session: {', '.join(f'{k[8:]}={v}' for k, v in sorted(delta.items()))}"
        )
        print(f"statistics: mean single {statistics.mean(lat['single gateway']) * 1000:.2f} ms")
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    main()
