"""Containment costs: worker start time per tier, per-call overhead of a warm contained stdio worker against the
same server uncontained, and memory per idle worker.

Runs the gateway's own containment runtime in-process (the same launcher, sandbox and worker code the gateway
uses), plus an end-to-end comparison through a real gateway process with the real SDK client. Prints figures;
asserts nothing. Run as root to measure what CI and production (per-agent uids) do.

    python bench/containment_bench.py [--starts 30] [--calls 400] [--idle 8] [--no-gateway]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import anyio  # noqa: E402

from gateway.containment.launcher import LaunchRequest  # noqa: E402
from gateway.containment.pool import WorkerKey  # noqa: E402
from gateway.containment.profile import Profile, build_profile  # noqa: E402
from gateway.containment.runtime import Containment  # noqa: E402
from gateway.containment.settings import ContainmentConfig, ProfileConfig  # noqa: E402
from gateway.metrics import Metrics  # noqa: E402

BOX = ["/usr/bin/python3", str(REPO / "conformance" / "containment" / "box_server.py")]
ENV = {"PATH": "/usr/bin:/bin"}
LIMITS = {"memory_mb": 256, "pids": 64, "cpu_seconds": 30, "timeout_s": 60}


def ms(values: list[float]) -> str:
    v = sorted(values)
    p95 = v[min(len(v) - 1, round(0.95 * (len(v) - 1)))]
    return f"median {statistics.median(v) * 1000:7.2f} ms   p95 {p95 * 1000:7.2f} ms   (n={len(v)})"


def us(values: list[float]) -> str:
    v = sorted(values)
    p95 = v[min(len(v) - 1, round(0.95 * (len(v) - 1)))]
    return f"median {statistics.median(v) * 1e6:7.1f} us   p95 {p95 * 1e6:7.1f} us   (n={len(v)})"


def profiles() -> dict[str, ProfileConfig]:
    box_dir = str(REPO / "conformance" / "containment")
    rw = {"read_write": ["{workspace}"], "env": ENV, **LIMITS}
    return {
        "none": ProfileConfig.model_validate({"tier": "none", "network": "host", **rw}),
        "process": ProfileConfig.model_validate({"tier": "process", "network": "host", **rw}),
        "sandbox": ProfileConfig.model_validate({"tier": "sandbox", "read_only": ["/usr", box_dir], **rw}),
    }


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def bench_runtime(args: argparse.Namespace, work: Path) -> None:
    cfg = ContainmentConfig(
        workspace_root=str(work / "ws"),
        uid_base=330000,
        uid_count=1000,
        idle_timeout_s=3600,
        max_workers=200,
        profiles=profiles(),
    )
    rt = Containment(cfg, work, Metrics())
    prot = rt.caps.protections()
    print(
        f"host: root={prot['running_as_root']} bwrap={prot['bubblewrap']} landlock_abi={prot['landlock_abi']} "
        f"seccomp={prot['seccomp']} cgroup={prot['cgroup']} cpus={os.cpu_count()}"
    )
    ps: dict[str, Profile] = {name: build_profile(name, p, work) for name, p in cfg.profiles.items()}
    async with anyio.create_task_group() as tg:
        await rt.start(tg)

        print("\n1. one-shot worker, `true` to completion (spawn, confine, run, exit, clean up)")
        for tier in ("none", "process", "sandbox"):
            times = []
            for i in range(args.starts):
                t0 = time.perf_counter()
                r = await rt.run_once(LaunchRequest("bench", f"a{i % 4}", ps[tier], ["/bin/true"]), b"", 30, 1024)
                times.append(time.perf_counter() - t0)
                assert r.exit_code == 0, r
            print(f"   {tier:8} {ms(times)}")

        print("\n2. stdio worker start, spawn until the MCP handshake is done (a stdlib MCP server, python3)")
        for tier in ("none", "process", "sandbox"):
            times = []
            for i in range(max(5, args.starts // 2)):
                key = WorkerKey("bench", f"s{i}", ps[tier].digest)
                req = LaunchRequest("bench", f"s{i}", ps[tier], BOX)
                t0 = time.perf_counter()
                w = await rt.worker(key, req, 30)
                times.append(time.perf_counter() - t0)
                await rt.pool.stop(w, "idle")
            print(f"   {tier:8} {ms(times)}")

        print("\n3. warm stdio worker: tools/call round trip, contained against the same server uncontained")
        warm = {}
        for tier in ("none", "sandbox"):
            key = WorkerKey("bench", "warm", ps[tier].digest)
            warm[tier] = await rt.worker(key, LaunchRequest("bench", "warm", ps[tier], BOX), 30)
        params = {"name": "echo", "arguments": {"text": "x" * 64}}
        rounds: dict[str, list[float]] = {"none": [], "sandbox": []}
        for _ in range(20):  # warm-up
            for w in warm.values():
                await w.call("tools/call", params, 30)
        for _ in range(args.calls):  # interleaved, so both see the same machine
            for tier, w in warm.items():
                t0 = time.perf_counter()
                await w.call("tools/call", params, 30)
                rounds[tier].append(time.perf_counter() - t0)
        for tier in ("none", "sandbox"):
            print(f"   {'uncontained' if tier == 'none' else 'sandbox':12} {us(rounds[tier])}")
        diff = statistics.median(rounds["sandbox"]) - statistics.median(rounds["none"])
        print(f"   overhead of the sandbox per call (median difference): {diff * 1e6:+.1f} us")
        for w in warm.values():
            await rt.pool.stop(w, "idle")

        print(f"\n4. memory of idle stdio workers ({args.idle} agents, one sandboxed worker each)")
        idle = []
        for i in range(args.idle):
            key = WorkerKey("bench", f"idle{i}", ps["sandbox"].digest)
            idle.append(await rt.worker(key, LaunchRequest("bench", f"idle{i}", ps["sandbox"], BOX), 30))
        await anyio.sleep(1.0)
        pss, cg = [], []
        for w in idle:
            procs = w.proc.cgroup.procs() if w.proc.cgroup else [w.proc.pid]
            pss.append(sum(pss_kb(p) for p in procs) / 1024)
            if w.proc.cgroup is not None:
                cg.append(w.proc.cgroup.memory_current_bytes() / 1048576)
        print(
            f"   PSS per worker (bwrap, its init, the server): median {statistics.median(pss):.1f} MiB, "
            f"max {max(pss):.1f} MiB"
        )
        if cg:
            print(
                f"   cgroup memory charged per worker:           median {statistics.median(cg):.1f} MiB, "
                f"max {max(cg):.1f} MiB"
            )
        for w in idle:
            await rt.pool.stop(w, "idle")
        tg.cancel_scope.cancel()
    await rt.aclose()


async def bench_gateway(args: argparse.Namespace, work: Path) -> None:
    from tests.conftest import KEYS, default_config, free_port, mcp_client, start_gateway

    box = f"command = {BOX!r}".replace("'", '"')
    port = free_port()
    text = default_config(
        port,
        work,
        f"""
[[upstreams]]
name = "plain"
transport = "stdio"
{box}

[[upstreams]]
name = "boxed"
transport = "stdio"
{box}
containment = "sandbox"

[[upstreams]]
name = "sh"
transport = "builtin"
tools = "shell"
containment = "sandbox"
""",
        extra=f"""
[containment]
workspace_root = "{work}/gw-ws"
uid_base = 331000
uid_count = 100
[containment.profiles.sandbox]
tier = "sandbox"
read_only = ["/usr", "{REPO}/conformance/containment"]
read_write = ["{{workspace}}"]
env = {{ PATH = "/usr/bin:/bin" }}
""",
        policy=REPO / "tests" / "containment_policy",
    )
    gw = start_gateway(work / "gw", text, port)
    try:
        async with mcp_client(gw.url, KEYS["ci-bot"][2]) as c:
            for _ in range(20):
                await c.call_tool("plain__echo", {"text": "x"})
                await c.call_tool("boxed__echo", {"text": "x"})
            rounds: dict[str, list[float]] = {"plain": [], "boxed": []}
            for _ in range(args.calls // 2):
                for name in rounds:
                    t0 = time.perf_counter()
                    await c.call_tool(f"{name}__echo", {"text": "x" * 64})
                    rounds[name].append(time.perf_counter() - t0)
            shell = []
            for _ in range(max(10, args.starts // 2)):
                t0 = time.perf_counter()
                await c.call_tool("sh__run", {"command": "true"})
                shell.append(time.perf_counter() - t0)
        print("\n5. end to end through a gateway process (SDK client over HTTP, policy, audit)")
        print(f"   stdio server uncontained          {ms(rounds['plain'])}")
        print(f"   same server, warm sandboxed worker {ms(rounds['boxed'])}")
        diff = statistics.median(rounds["boxed"]) - statistics.median(rounds["plain"])
        print(f"   difference of medians: {diff * 1000:+.2f} ms")
        print(f"   built-in shell `true` (fresh sandbox per call) {ms(shell)}")
    finally:
        gw.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--starts", type=int, default=30)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--idle", type=int, default=8)
    ap.add_argument("--no-gateway", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="containment-bench.", dir="/tmp"))
    os.chmod(work, 0o711)
    try:
        anyio.run(bench_runtime, args, work)
        if not args.no_gateway:
            anyio.run(bench_gateway, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
