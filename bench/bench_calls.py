"""Per-call cost of the gateway, measured side by side with direct connections to the same upstreams.

One echo fixture server runs over streamable HTTP (called directly, and fronted by the gateways); the same
fixture is launched over stdio (directly by the client, and by each gateway). Two gateways run at once: one with
an allow-all policy and one with the shipped policy set (rego/, the demo ``ci-bot`` identity: team platform,
role ci; its grant for ``echo`` copied to the stdio upstream). API-key auth, audit and metrics are on in both.
For each protocol era (2025-11-25 sessions, 2026-07-28 stateless) every path is measured in the same run,
interleaved call by call (latency; ``--block N`` runs N calls in a row per path instead, so each path finds its
caches warm) and round by round (throughput), so load on the machine hits every path alike.

Printed: p50/p99 per path and added over the direct connection to the same upstream, calls/s at
``--concurrency`` sessions and the ratio to direct, the cost of a 100-tool ``tools/list`` over a 1-tool one,
the gateway's RSS with ``--sessions`` sessions open, and the floors: for a stdio upstream, what the SDK client's
HTTP costs by itself (a null HTTP server that does no work, ``bench/null_server.py``, plus the echo's own time
over a raw pipe, against direct stdio); for an HTTP upstream, what one more Python HTTP hop costs by itself (a
forwarder on the gateway's own stack that does nothing else, ``bench/null_proxy.py``, and the thinnest forwarder
Python can be, ``bench/raw_proxy.py``, against direct HTTP).
The throughput rounds also give each process's CPU time per call (the client, the process in the middle, the
HTTP echo): on a machine with few cores, throughput against direct is set by the CPU the middle adds per call,
so the run also prints, per HTTP path, the CPU a call its middle may spend for 0.9x direct, beside what it spent.
``--pin`` gives the gateways a core of their own, with the forwarders and the null server that give the floors (the
client and the echo share the other cores): what the gateway costs when it takes no CPU from the agent and the
tool server. Direct stdio then runs its echo children on the client's cores, where a gateway runs its one echo on
its own core, so only the HTTP columns compare like for like.
Last, the per-stage profile of the gateway's calls (``gateway/stages.py``: authenticate, parse, decide, record,
forward, answer, in microseconds).

    python bench/bench_calls.py [--calls 200] [--block 1] [--seconds 2] [--rounds 2] [--concurrency 16] [--sessions 200]
                                [--eras legacy,modern] [--pin] [--fsync] [--no-secrets] [--secrets-off-too]
                                [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client, StdioServerParameters

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import conftest  # noqa: E402
from tests.conftest import (  # noqa: E402
    ECHO,
    KEYS,
    RunningGateway,
    default_config,
    free_port,
    mcp_client,
    start_gateway,
)

KEY = KEYS["ci-bot"][2]  # team platform, role ci: the demo ci-bot of gateway.toml
ERAS = {"legacy": "2025-11-25 (sessions)", "modern": "2026-07-28 (stateless)"}
CLIENT_MODE = {"legacy": "legacy", "modern": "auto"}

ALLOW_ALL = 'package gateway\nimport rego.v1\ndecision := {"allow": true, "reasons": []}\n'

Opener = Callable[[str], AbstractAsyncContextManager[Any]]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


@asynccontextmanager
async def stdio_client(mode: str) -> AsyncIterator[Any]:
    params = StdioServerParameters(command=ECHO[0], args=ECHO[1:])
    async with Client(params, mode=mode, cache=None) as c:  # type: ignore[arg-type]
        yield c


def http_opener(url: str) -> Opener:
    return lambda mode: mcp_client(url, KEY, mode)


async def latency(
    targets: dict[str, tuple[Opener, str]], calls: int, mode: str, block: int = 1
) -> dict[str, list[float]]:
    """Sequential calls, one client per path, interleaved in blocks of `block` calls so noise hits every path alike."""
    out: dict[str, list[float]] = {name: [] for name in targets}
    clients: dict[str, Any] = {}
    stack = []
    try:
        for name, (opener, _tool) in targets.items():
            cm = opener(mode)
            clients[name] = await cm.__aenter__()
            stack.append(cm)
        for name, (_opener, tool) in targets.items():  # warm up
            for _ in range(20):
                await clients[name].call_tool(tool, {"text": "warm"})
        for start in range(0, calls, block):
            for name, (_opener, tool) in targets.items():
                for _ in range(min(block, calls - start)):
                    t0 = time.perf_counter()
                    r = await clients[name].call_tool(tool, {"text": "hello"})
                    out[name].append(time.perf_counter() - t0)
                    assert not r.is_error, r
    finally:
        for cm in reversed(stack):
            await cm.__aexit__(None, None, None)
    return out


async def echo_own_time(calls: int) -> float:
    """p50 ms of a tools/call to the stdio echo fixture over a raw pipe (no SDK client): the upstream's own time."""
    proc = await anyio.open_process([*ECHO])
    assert proc.stdin is not None and proc.stdout is not None
    buf = b""

    async def rpc(msg: dict[str, Any]) -> None:
        nonlocal buf
        await proc.stdin.send(json.dumps(msg).encode() + b"\n")  # type: ignore[union-attr]
        if "id" in msg:
            while b"\n" not in buf:
                buf += await proc.stdout.receive()  # type: ignore[union-attr]
            _, _, buf = buf.partition(b"\n")

    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}
    await rpc({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init})
    await rpc({"jsonrpc": "2.0", "method": "notifications/initialized"})
    times = []
    for i in range(1, calls + 20):
        t0 = time.perf_counter()
        await rpc({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "echo", "arguments": {}}})
        times.append(time.perf_counter() - t0)
    await proc.aclose()
    return pct(times[20:], 0.5)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured_throughput(
    opener: Opener, tool: str, concurrency: int, seconds: float, mode: str, pids: dict[str, int]
) -> tuple[float, dict[str, float]]:
    """calls/s, and the CPU microseconds per call, over the timed window only, of this client and of each process
    in ``pids``."""

    def probe() -> dict[str, float]:
        return {name: cpu_s(pid) for name, pid in pids.items()} | {"client": time.process_time()}

    window: dict[str, Any] = {}
    rate = anyio.run(throughput, opener, tool, concurrency, seconds, mode, probe, window)
    start, end, calls = window["start"], window["end"], max(window["calls"], 1)
    return rate, {name: (end[name] - start[name]) / calls * 1e6 for name in start}


async def throughput(
    opener: Opener,
    tool: str,
    concurrency: int,
    seconds: float,
    mode: str,
    probe: Callable[[], dict[str, float]] | None = None,
    window: dict[str, Any] | None = None,
) -> float:
    """Calls per second at ``concurrency`` sessions; ``probe``'s readings at the start and the end of the timed
    window (when the first session stops), and the calls done by then, go into ``window``."""
    done = 0
    errors = 0
    ready = anyio.Event()
    started = 0

    async def worker() -> None:
        nonlocal done, errors, started
        async with opener(mode) as c:
            await c.call_tool(tool, {"text": "warm"})
            started += 1
            await ready.wait()
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                r = await c.call_tool(tool, {"text": "hello"})
                errors += bool(r.is_error)
                done += 1
            if probe is not None and window is not None and "end" not in window:
                window["end"], window["calls"] = probe(), done

    t0 = 0.0
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
        while started < concurrency:
            await anyio.sleep(0.05)
        if probe is not None and window is not None:
            window["start"] = probe()
        t0 = time.perf_counter()
        ready.set()
    elapsed = time.perf_counter() - t0
    if errors:
        print(f"  ({errors} error results)")
    return done / elapsed


async def list_cost(url: str, calls: int, mode: str) -> dict[str, float]:
    """p50 of tools/list on the 1-tool and the 100-tool upstream, through the gateway (its per-upstream view) and
    directly over stdio, interleaved: the client's own work on 100 tools is in both, so the gateway's share of a
    long list is the difference of the two differences."""
    out: dict[str, list[float]] = {"one": [], "hundred": [], "direct one": [], "direct hundred": []}
    direct = {
        f"direct {name}": StdioServerParameters(command=ECHO[0], args=[*ECHO[1:], "--tools", str(n)])
        for name, n in (("one", 1), ("hundred", 100))
    }
    async with (
        mcp_client(url + "/one", KEY, mode) as one,
        mcp_client(url + "/hundred", KEY, mode) as hundred,
        Client(direct["direct one"], mode=mode, cache=None) as direct_one,  # type: ignore[arg-type]
        Client(direct["direct hundred"], mode=mode, cache=None) as direct_hundred,  # type: ignore[arg-type]
    ):
        clients = {"one": one, "hundred": hundred, "direct one": direct_one, "direct hundred": direct_hundred}
        for name, c in clients.items():
            n = len((await c.list_tools()).tools)
            assert n == (100 if name.endswith("hundred") else 1), (name, n)
        for _ in range(calls):
            for name, c in clients.items():
                t0 = time.perf_counter()
                await c.list_tools()
                out[name].append(time.perf_counter() - t0)
    return {name: pct(v, 0.5) for name, v in out.items()}


async def rss_at(gw: RunningGateway, sessions: int, tool: str) -> tuple[float, float]:
    """The gateway's RSS (MB) before, and with ``sessions`` 2025-era sessions open, each having made one call."""
    before = rss_mb(gw.proc.pid)
    opened = 0
    async with anyio.create_task_group() as tg:
        done = anyio.Event()

        limiter = anyio.CapacityLimiter(16)  # sessions being opened at once

        async def hold() -> None:
            nonlocal opened
            cm = mcp_client(gw.url, KEY, "legacy")
            async with limiter:
                c = await cm.__aenter__()
            try:
                await c.call_tool(tool, {"text": "hold"})
                opened += 1
                await done.wait()
            finally:
                await cm.__aexit__(None, None, None)

        for _ in range(sessions):
            tg.start_soon(hold)
        while opened < sessions:
            await anyio.sleep(0.1)
        after = rss_mb(gw.proc.pid)
        done.set()
    return before, after


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stage_profile(gw: RunningGateway, reset: bool = True) -> dict[str, Any]:
    r = httpx2.get(gw.admin_base + "/debug/stages" + ("?reset=1" if reset else ""), timeout=5)
    return r.json() if r.status_code == 200 else {}


def print_stages(title: str, prof: dict[str, Any]) -> None:
    order = ["authenticate", "parse", "decide", "record", "forward", "answer", "total"]
    print(f"  per-stage profile, {title} (p50 us per call; forward includes the upstream's own time):")
    print(f"    {'upstream':12}" + "".join(f"{s:>13}" for s in order))
    for label, stats in prof.items():
        row = "".join(f"{stats[s]['p50_us']:13.1f}" if s in stats else f"{'-':>13}" for s in order)
        print(f"    {label:12}{row}")


def print_cpu(cpu: dict[str, dict[str, float]], concurrency: int) -> None:
    print(f"  CPU per call at {concurrency} sessions (us, median of rounds; middle = the gateway or the proxy):")
    print(f"    {'path':26}{'client':>9}{'middle':>9}{'HTTP echo':>11}")
    for name, use in cpu.items():
        cells = "".join(
            f"{use[k]:{w}.0f}" if k in use else f"{'-':>{w}}" for k, w in (("client", 9), ("middle", 9), ("echo", 11))
        )
        print(f"    {name:26}{cells}")


def budget_at(cpu: dict[str, dict[str, float]], target: float = 0.9) -> dict[str, dict[str, float]]:
    """Per HTTP path: the CPU per call its middle may spend for ``target`` x direct throughput, by the CPU model
    (all processes share the machine's cores, so calls/s go as 1 / the CPU a call costs them all), and what it
    spent. The path's own client and echo costs are counted: a middle that makes them dearer pays for it."""
    direct = cpu["direct HTTP"]["client"] + cpu["direct HTTP"]["echo"]
    out = {}
    for name, use in cpu.items():
        if "middle" in use and "echo" in use:
            allowed = direct / target - use["client"] - use["echo"]
            out[name] = {"allowed_us": allowed, "spent_us": use["middle"]}
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a child is listed under the thread that started it)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []  # it has ended
    tree = [pid]
    for tid in tids:
        try:
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except FileNotFoundError:
            continue  # the thread has ended
        for child in children:
            tree += process_tree(int(child))
    return tree


def pin_tree(pid: int, cpus: set[int] | None = None) -> set[int]:
    """Every thread of ``pid`` and of its descendants onto ``cpus`` (children inherit it from then on), or with
    no ``cpus`` left as they are; the CPUs the tree may run on, read back."""
    allowed: set[int] = set()
    for proc in process_tree(pid):
        try:
            tids = os.listdir(f"/proc/{proc}/task")
        except FileNotFoundError:
            continue  # it has ended
        for tid in map(int, tids):
            try:
                if cpus is not None:
                    os.sched_setaffinity(tid, cpus)
                allowed |= os.sched_getaffinity(tid)
            except ProcessLookupError:
                continue  # the thread has ended
    return allowed


def wait_http(url: str) -> None:
    for _ in range(100):
        try:
            httpx2.get(url, timeout=0.5)
            return
        except httpx2.HTTPError:
            time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=200, help="sequential calls per path and era (latency)")
    ap.add_argument("--block", type=int, default=1, help="latency: calls in a row per path before the next path")
    ap.add_argument(
        "--pin",
        action="store_true",
        help="the gateways (with their upstream children) and the floors' forwarders on the last CPU, the client "
        "and the HTTP echo on the others: what the gateway costs the agent and the tool server on a core of its own",
    )
    ap.add_argument("--seconds", type=float, default=2.0, help="length of one throughput run")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved throughput rounds per path")
    ap.add_argument("--concurrency", type=int, default=16, help="sessions at once for throughput")
    ap.add_argument("--sessions", type=int, default=200, help="sessions held open for the RSS figure (0: skip)")
    ap.add_argument("--list-calls", type=int, default=50, help="tools/list calls per list size (0: skip)")
    ap.add_argument("--eras", default="legacy,modern", help="comma-separated: legacy (2025-11-25), modern (2026-07-28)")
    ap.add_argument("--fsync", action="store_true", help="[audit] fsync = true on both gateways")
    ap.add_argument("--no-secrets", action="store_true", help="[secrets] scanning off on both gateways")
    ap.add_argument(
        "--secrets-off-too", action="store_true", help="a third gateway: shipped policy with secret scanning off"
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of an earlier gateway (git archive REV | tar -x -C DIR): its gateway, with its own shipped "
        "policy, joins the run as 'baseline', interleaved with the others (before/after under the same load)",
    )
    args = ap.parse_args()
    eras = [e for e in args.eras.split(",") if e]

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    echo_port = free_port()
    null_port = free_port()
    proxy_port = free_port()
    raw_port = free_port()
    echo_url = f"http://127.0.0.1:{echo_port}/mcp"
    if args.block < 1:
        ap.error("--block must be 1 or more")
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin:
        if len(cpus) < 2:
            ap.error("--pin needs two CPUs or more")
        os.sched_setaffinity(0, set(cpus[:-1]))  # the processes started below inherit it
    procs = [
        subprocess.Popen([*ECHO, "--transport", "http", "--port", str(echo_port)], stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, str(REPO / "bench" / "null_server.py"), str(null_port)]),
        subprocess.Popen([sys.executable, str(REPO / "bench" / "null_proxy.py"), str(proxy_port), echo_url]),
        subprocess.Popen([sys.executable, str(REPO / "bench" / "raw_proxy.py"), str(raw_port), str(echo_port)]),
    ]
    if args.pin:  # the middles that stand in for a gateway (the floors) get its core too; the echo does not
        for p in procs[1:]:
            pin_tree(p.pid, {cpus[-1]})
    for port in (echo_port, null_port, proxy_port, raw_port):
        wait_http(f"http://127.0.0.1:{port}/mcp")
    toml = json.dumps  # a TOML basic string and a JSON string agree for these values
    upstreams = (
        f'[[upstreams]]\nname = "echo"\ntransport = "http"\nurl = "http://127.0.0.1:{echo_port}/mcp"\n\n'
        f'[[upstreams]]\nname = "echostdio"\ntransport = "stdio"\ncommand = {toml(ECHO)}\n\n'
        f'[[upstreams]]\nname = "one"\ntransport = "stdio"\ncommand = {toml([*ECHO, "--tools", "1"])}\n\n'
        f'[[upstreams]]\nname = "hundred"\ntransport = "stdio"\ncommand = {toml([*ECHO, "--tools", "100"])}\n'
    )
    allow = work / "allow"
    allow.mkdir()
    (allow / "allow.rego").write_text(ALLOW_ALL)
    shipped = work / "rego"
    shutil.copytree(REPO / "rego", shipped)
    data = json.loads((shipped / "data.json").read_text())
    grants = data["teams"]["platform"]["roles"]["ci"]
    for name in ("echostdio", "one", "hundred"):  # the same grant as the shipped one for "echo"
        grants[name] = grants["echo"]
    (shipped / "data.json").write_text(json.dumps(data))
    trees = {"allow-all": REPO, "shipped policy": REPO}
    if args.baseline is not None:
        base_policy = work / "baseline-rego"
        shutil.copytree(args.baseline / "rego", base_policy)
        data = json.loads((base_policy / "data.json").read_text())
        grants = data["teams"]["platform"]["roles"]["ci"]
        for name in ("echostdio", "one", "hundred"):
            grants[name] = grants["echo"]
        (base_policy / "data.json").write_text(json.dumps(data))
        trees["baseline"] = args.baseline.resolve()
    extra = "[audit]\nfsync = true\n" if args.fsync else ""
    env = {"MCP_GATEWAY_STAGES": "1"}
    gws: dict[str, RunningGateway] = {}
    load0 = os.getloadavg()
    try:
        modes = [("allow-all", allow), ("shipped policy", shipped)]
        if args.secrets_off_too:  # interleaved with the others, so the machine's load hits it alike
            modes.append(("shipped, scan off", shipped))
        if args.baseline is not None:
            modes.append(("baseline", work / "baseline-rego"))
        for mode, policy in modes:
            port = free_port()
            config = default_config(port, work / mode.replace(" ", "-"), upstreams, policy=policy)
            # One agent holds every session of the RSS figure: its per-agent session cap (100) must allow them.
            config = config.replace(
                "[server]\n", f"[server]\nmax_sessions_per_agent = {max(100, args.sessions + 20)}\n"
            )
            if extra:
                config = config.replace("[audit]\n", extra)
            if (args.no_secrets and mode != "baseline") or mode == "shipped, scan off":
                config += "\n[secrets]\nscan_arguments = false\nscan_results = false\n"
            conftest.REPO = trees.get(mode, REPO)  # the code the gateway runs: its working directory
            try:
                gws[mode] = start_gateway(work / mode.replace(" ", "-"), config, port, env=env)
                if args.pin:
                    pin_tree(gws[mode].proc.pid, {cpus[-1]})
            finally:
                conftest.REPO = REPO
        direct_http = http_opener(echo_url)
        targets: dict[str, tuple[Opener, str, str]] = {  # name: (opener, tool, the direct path it is compared with)
            "direct stdio": (stdio_client, "echo", ""),
            "direct HTTP": (direct_http, "echo", ""),
            # The SDK client over HTTP to a server that does nothing: what the client's HTTP costs by itself.
            "null HTTP server": (http_opener(f"http://127.0.0.1:{null_port}/mcp"), "echo", "direct stdio"),
            # One more HTTP hop in Python that does nothing else, in front of the same echo: what it costs by itself.
            "null proxy -> HTTP": (http_opener(f"http://127.0.0.1:{proxy_port}/mcp"), "echo", "direct HTTP"),
            "raw proxy -> HTTP": (http_opener(f"http://127.0.0.1:{raw_port}/mcp"), "echo", "direct HTTP"),
        }
        echo_pid = {"echo": procs[0].pid}
        pids: dict[str, dict[str, int]] = {  # name: the processes whose CPU per call is shown
            "direct HTTP": echo_pid,
            "null proxy -> HTTP": {"middle": procs[2].pid} | echo_pid,
            "raw proxy -> HTTP": {"middle": procs[3].pid} | echo_pid,
        }
        for mode, gw in gws.items():
            targets[f"{mode} -> stdio"] = (http_opener(gw.url), "echostdio__echo", "direct stdio")
            targets[f"{mode} -> HTTP"] = (http_opener(gw.url), "echo__echo", "direct HTTP")
            pids[f"{mode} -> stdio"] = {"middle": gw.proc.pid}
            pids[f"{mode} -> HTTP"] = {"middle": gw.proc.pid} | echo_pid
        print(
            f"mcp-gateway bench: {args.calls} sequential calls per path and era (interleaved); throughput "
            f"{args.concurrency} sessions x {args.seconds:g} s x {args.rounds} rounds; load {load0[0]:.2f} "
            f"(1 min) on {os.cpu_count()} CPUs; audit fsync {'on' if args.fsync else 'off'}; secret scanning "
            f"{'off' if args.no_secrets else 'on'}"
            + (f"; the gateways pinned to CPU {cpus[-1]}, the rest to {cpus[:-1]}" if args.pin else "")
        )
        report: dict[str, Any] = {"load_start": load0, "eras": {}}
        named = zip(("echo", "null HTTP server", "null proxy", "raw proxy"), procs, strict=True)
        running = {name: p.pid for name, p in named} | {mode: gw.proc.pid for mode, gw in gws.items()}
        report["cpus"] = {name: sorted(pin_tree(pid)) for name, pid in running.items()}  # read back: what --pin did
        for era in eras:
            mode = CLIENT_MODE[era]
            for gw in gws.values():
                stage_profile(gw)
            plain = {name: (opener, tool) for name, (opener, tool, _) in targets.items()}
            lat = anyio.run(latency, plain, args.calls, mode, args.block)
            profiles = {name: stage_profile(gw) for name, gw in gws.items()}
            tput: dict[str, list[float]] = {name: [] for name in targets}
            cpu: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (opener, tool, _) in targets.items():
                    rate, per_call = measured_throughput(
                        opener, tool, args.concurrency, args.seconds, mode, pids.get(name, {})
                    )
                    tput[name].append(rate)
                    cpu[name].append(per_call)
            print(f"\nera {ERAS[era]}:")
            head = ("p50 ms", "p99 ms", "+p50 ms", "+p99 ms")
            print(f"  {'path':26} " + " ".join(f"{h:>8}" for h in head) + f" {'calls/s':>9} {'x direct':>9}")
            rows = {}
            for name, (_, _, base) in targets.items():
                p50, p99, cps = pct(lat[name], 0.5), pct(lat[name], 0.99), statistics.median(tput[name])
                ref = base or name
                add50, add99 = p50 - pct(lat[ref], 0.5), p99 - pct(lat[ref], 0.99)
                ratio = cps / statistics.median(tput[ref])
                rows[name] = {"p50_ms": p50, "p99_ms": p99, "added_p50_ms": add50, "added_p99_ms": add99}
                rows[name] |= {"calls_per_s": cps, "x_direct": ratio}
                print(f"  {name:26} {p50:8.2f} {p99:8.2f} {add50:+8.2f} {add99:+8.2f} {cps:9.0f} {ratio:9.2f}")
            own = anyio.run(echo_own_time, args.calls)
            floor = rows["null HTTP server"]["p50_ms"] + own - rows["direct stdio"]["p50_ms"]
            print(
                f"  floor: the echo's own time over a raw pipe {own:.2f} ms; a gateway that cost nothing would add "
                f"{floor:+.2f} ms p50 over direct stdio here (null HTTP server + the echo's own time - direct stdio)"
            )
            proxy, raw = rows["null proxy -> HTTP"], rows["raw proxy -> HTTP"]
            print(
                f"  HTTP floor: a forwarder that does nothing else adds {proxy['added_p50_ms']:+.2f} ms p50 over "
                f"direct HTTP at {proxy['x_direct']:.2f}x its throughput on the gateway's stack (null proxy), and "
                f"{raw['added_p50_ms']:+.2f} ms at {raw['x_direct']:.2f}x as the thinnest Python can be (raw proxy)"
            )
            cpu_use = {
                name: {k: statistics.median(r[k] for r in rounds) for k in rounds[0]} for name, rounds in cpu.items()
            }
            print_cpu(cpu_use, args.concurrency)
            budget = {} if args.pin else budget_at(cpu_use)  # the model is of cores shared by all
            if budget:
                print(
                    "  0.9x direct HTTP throughput by the CPU model leaves the middle (us a call, allowed / spent): "
                    + "; ".join(
                        f"{name.removesuffix(' -> HTTP')} {b['allowed_us']:.0f} / {b['spent_us']:.0f}"
                        for name, b in budget.items()
                    )
                )
            for name, prof in profiles.items():
                print_stages(f"{name}, {ERAS[era]}", prof)
            report["eras"][era] = {
                "paths": rows,
                "stages": profiles,
                "echo_own_p50_ms": own,
                "floor_p50_ms": floor,
                "http_floor_added_p50_ms": proxy["added_p50_ms"],
                "http_floor_x_direct": proxy["x_direct"],
                "raw_floor_added_p50_ms": raw["added_p50_ms"],
                "raw_floor_x_direct": raw["x_direct"],
                "cpu_us_per_call": cpu_use,
                "cpu_budget_at_0_9": budget,
            }
        if args.list_calls:
            print(
                "\ntools/list (p50 ms), 1 tool vs 100 tools, 2025-11-25 era, through the gateway and direct over stdio:"
            )
            report["lists"] = {}
            for name, gw in gws.items():
                cost = anyio.run(list_cost, gw.url, args.list_calls, "legacy")
                report["lists"][name] = cost
                added = cost["hundred"] - cost["one"]
                direct = cost["direct hundred"] - cost["direct one"]
                print(
                    f"  {name:26} 1 tool {cost['one']:6.2f}   100 tools {cost['hundred']:6.2f}   added {added:+6.2f}"
                    f"   (direct {cost['direct one']:.2f} / {cost['direct hundred']:.2f}, added {direct:+.2f}; "
                    f"the gateway's share {added - direct:+.2f})"
                )
        if args.sessions:
            gw = gws["shipped policy"]
            stage_profile(gw)  # the stage samples are the benchmark's, not the gateway's: emptied before the figure
            before, after = anyio.run(rss_at, gw, args.sessions, "echostdio__echo")
            report["rss_mb"] = {"before": before, "at_sessions": after, "sessions": args.sessions}
            print(f"\ngateway RSS (shipped policy): {before:.1f} MB, {after:.1f} MB with {args.sessions} sessions open")
        load1 = os.getloadavg()
        report["load_end"] = load1
        print(f"\nload at the end {load1[0]:.2f} (1 min)")
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
    finally:
        for gw in gws.values():
            gw.stop()
        for p in procs:
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
