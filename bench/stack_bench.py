"""What one do-nothing HTTP hop costs on each server and client stack at hand, side by side with a direct
connection: is there a stack on which a Python MCP gateway could keep 0.9x direct throughput at all?

Starts the HTTP echo upstream and, in front of it, ``bench/null_proxy.py`` (a forwarder with no work of its own)
on every server x client pair that is installed: uvicorn (the gateway's) or granian (Rust), with aiohttp (the
gateway's) or pyreqwest (Rust's reqwest); and ``bench/raw_proxy.py`` (uvloop protocols and httptools, no library:
the thinnest Python hop, a measuring device only). granian and pyreqwest are not the gateway's dependencies:
``pip install -e '.[stacks]'`` adds them; without them, their pairs are skipped.

Each path is driven by the SDK client at ``--concurrency`` sessions, interleaved in rounds so the machine's noise
hits every path alike. Prints calls/s (median of the rounds), the ratio to direct, and the proxy's CPU per call
(all its processes and threads, over the timed window).

    python bench/stack_bench.py [--era modern|legacy] [--rounds 3] [--seconds 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_calls import CLIENT_MODE, ECHO, http_opener, measured_throughput, process_tree, wait_http  # noqa: E402

from tests.conftest import free_port  # noqa: E402


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--era", choices=sorted(CLIENT_MODE), default="modern")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    echo_port = free_port()
    echo_url = f"http://127.0.0.1:{echo_port}/mcp"
    procs = [subprocess.Popen([*ECHO, "--transport", "http", "--port", str(echo_port)], stderr=subprocess.DEVNULL)]
    paths: dict[str, tuple[str, subprocess.Popen[bytes] | None]] = {"direct": (echo_url, None)}
    bench = REPO / "bench"
    env = {**os.environ, "NULL_PROXY_UPSTREAM": echo_url, "PYTHONPATH": str(bench)}
    try:
        wait_http(echo_url)
        for client in ("aiohttp", "pyreqwest"):
            if not installed(client):
                print(f"skipped: {client} is not installed (pip install -e '.[stacks]')")
                continue
            for server in ("uvicorn", "granian"):
                if not installed(server):
                    print(f"skipped: {server} is not installed (pip install -e '.[stacks]')")
                    continue
                port = free_port()
                if server == "uvicorn":
                    cmd = [sys.executable, str(bench / "null_proxy.py"), str(port), echo_url]
                else:
                    cmd = [
                        *(sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop"),
                        *("--workers", "1", "--runtime-threads", "1", "--no-ws", "--log-level", "warning"),
                        *("--host", "127.0.0.1", "--port", str(port), "null_proxy:app"),
                    ]
                proc = subprocess.Popen(cmd, env={**env, "NULL_PROXY_CLIENT": client}, cwd=bench)
                procs.append(proc)
                paths[f"{server} + {client}"] = (f"http://127.0.0.1:{port}/mcp", proc)
        port = free_port()
        raw = subprocess.Popen([sys.executable, str(bench / "raw_proxy.py"), str(port), str(echo_port)])
        procs.append(raw)
        paths["raw proxy"] = (f"http://127.0.0.1:{port}/mcp", raw)
        for url, _ in paths.values():
            wait_http(url)

        mode = CLIENT_MODE[args.era]
        rates: dict[str, list[float]] = {name: [] for name in paths}
        cpu: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, (url, proc) in paths.items():
                pids = (
                    {} if proc is None else {f"p{pid}": pid for pid in process_tree(proc.pid)}
                )  # granian serves from a worker
                rate, per_call = measured_throughput(
                    http_opener(url), "echo", args.concurrency, args.seconds, mode, pids
                )
                rates[name].append(rate)
                cpu[name].append(sum(v for k, v in per_call.items() if k != "client"))
        direct = statistics.median(rates["direct"])
        load = os.getloadavg()[0]
        print(f"{args.era} era, {args.concurrency} sessions, {args.rounds} x {args.seconds:g} s, load {load:.1f}")
        print(f"{'path':24} {'calls/s':>8} {'x direct':>9} {'proxy CPU us/call':>18}")
        report = {}
        for name in paths:
            rate = statistics.median(rates[name])
            us = statistics.median(cpu[name])
            report[name] = {"calls_per_s": rate, "x_direct": rate / direct, "proxy_cpu_us_per_call": us}
            print(f"{name:24} {rate:8.0f} {rate / direct:9.2f} {us if name != 'direct' else 0:18.0f}")
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


if __name__ == "__main__":
    main()
