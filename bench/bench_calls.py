"""Per-call cost of the gateway: an allowed tools/call through it against the same upstream called directly.

Starts the echo fixture over streamable HTTP (the direct target) and a gateway that fronts the same fixture
twice: once over HTTP (the very server called directly) and once launched over stdio. The same SDK client
measures every path, interleaved in one run, then prints p50/p99 latency, calls/s with 16 concurrent sessions,
and the ratios to the direct connection. Auth, policy (shipped rego/), audit and metrics are all on.

    python bench/bench_calls.py [--calls 400] [--seconds 5] [--concurrency 16] [--mode legacy|auto]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import ECHO, KEYS, default_config, free_port, mcp_client, start_gateway  # noqa: E402

KEY = KEYS["ci-bot"][2]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


async def latency(targets: dict[str, tuple[str, str]], calls: int, mode: str) -> dict[str, list[float]]:
    """Sequential calls, one session per target, interleaved call by call so noise hits every path alike."""
    out: dict[str, list[float]] = {name: [] for name in targets}
    async with anyio.create_task_group():
        clients: dict[str, Any] = {}
        stack = []
        for name, (url, _tool) in targets.items():
            cm = mcp_client(url, KEY, mode)
            clients[name] = await cm.__aenter__()
            stack.append(cm)
        try:
            for name, (_url, tool) in targets.items():  # warm up
                for _ in range(20):
                    await clients[name].call_tool(tool, {"text": "warm"})
            for _ in range(calls):
                for name, (_url, tool) in targets.items():
                    t0 = time.perf_counter()
                    r = await clients[name].call_tool(tool, {"text": "hello"})
                    out[name].append(time.perf_counter() - t0)
                    assert not r.is_error, r
        finally:
            for cm in reversed(stack):
                await cm.__aexit__(None, None, None)
    return out


async def throughput(url: str, tool: str, concurrency: int, seconds: float, mode: str) -> float:
    done = 0
    errors = 0

    async def worker() -> None:
        nonlocal done, errors
        async with mcp_client(url, KEY, mode) as c:
            await c.call_tool(tool, {"text": "warm"})
            await ready.wait()
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                r = await c.call_tool(tool, {"text": "hello"})
                if r.is_error:
                    errors += 1
                done += 1

    ready = anyio.Event()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
        await anyio.sleep(1.0)
        t0 = time.perf_counter()
        ready.set()
    elapsed = time.perf_counter() - t0
    if errors:
        print(f"  ({errors} error results at {url})")
    return done / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--mode", default="legacy", choices=["legacy", "auto"])
    ap.add_argument("--policy-threads", type=int, default=4, help="[policy] threads (0: evaluate on the event loop)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    echo_port, gw_port = free_port(), free_port()
    echo = subprocess.Popen([*ECHO, "--transport", "http", "--port", str(echo_port)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            httpx2.get(f"http://127.0.0.1:{echo_port}/mcp", timeout=0.5)
            break
        except httpx2.HTTPError:
            time.sleep(0.1)
    upstreams = (
        f'[[upstreams]]\nname = "echo"\ntransport = "http"\nurl = "http://127.0.0.1:{echo_port}/mcp"\n\n'
        '[[upstreams]]\nname = "echostdio"\ntransport = "stdio"\ncommand = ' + str(ECHO).replace("'", '"') + "\n"
    )
    policy = work / "rego"
    subprocess.run(["cp", "-r", str(REPO / "rego"), str(policy)], check=True)
    # The bench agent may use both echo upstreams; everything else is the shipped policy set.
    import json

    data = json.loads((policy / "data.json").read_text())
    data["teams"]["platform"]["roles"]["ci"]["echostdio"] = ["*"]
    (policy / "data.json").write_text(json.dumps(data))
    config = default_config(gw_port, work, upstreams, policy=policy).replace(
        "[policy]\n", f"[policy]\nthreads = {args.policy_threads}\n"
    )
    gw = start_gateway(work, config, gw_port)
    try:
        targets = {
            "direct (HTTP)": (f"http://127.0.0.1:{echo_port}/mcp", "echo"),
            "gateway -> HTTP upstream": (gw.url, "echo__echo"),
            "gateway -> stdio upstream": (gw.url, "echostdio__echo"),
        }
        print(
            f"mcp-gateway bench: {args.calls} sequential calls per path (interleaved), "
            f"{args.concurrency} sessions x {args.seconds:g} s for throughput, client mode {args.mode}"
        )
        lat = anyio.run(latency, targets, args.calls, args.mode)
        tput: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(2):  # interleaved rounds
            for name, (url, tool) in targets.items():
                tput[name].append(anyio.run(throughput, url, tool, args.concurrency, args.seconds, args.mode))
        base_p50 = pct(lat["direct (HTTP)"], 0.5)
        base_tput = statistics.mean(tput["direct (HTTP)"])
        print(f"{'path':28} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'calls/s':>9} {'x direct':>9}")
        for name in targets:
            p50, p99, cps = pct(lat[name], 0.5), pct(lat[name], 0.99), statistics.mean(tput[name])
            print(f"{name:28} {p50:8.2f} {p99:8.2f} {p50 - base_p50:+8.2f} {cps:9.0f} {cps / base_tput:9.2f}")
    finally:
        gw.stop()
        echo.terminate()
        echo.wait()


if __name__ == "__main__":
    main()
