"""The per-stage profile of calls (gateway/stages.py): served on the admin listener only when switched on."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import ECHO, KEYS, REPO, default_config, free_port, mcp_client, start_gateway, stdio_upstream

pytestmark = pytest.mark.anyio

STAGES = ["authenticate", "parse", "decide", "record", "forward", "answer", "total"]


async def test_stages_are_timed_per_upstream_when_switched_on(tmp_path: Path) -> None:
    port = free_port()
    upstreams = stdio_upstream("echo", ECHO)
    gw = start_gateway(tmp_path, default_config(port, tmp_path, upstreams), port, env={"MCP_GATEWAY_STAGES": "1"})
    try:
        for mode in ("legacy", "auto"):  # both eras take the fast path
            async with mcp_client(gw.url, KEYS["ci-bot"][2], mode) as c:
                for _ in range(3):
                    assert not (await c.call_tool("echo__echo", {"text": "secret-argument"})).is_error
        r = httpx2.get(gw.admin_base + "/debug/stages?reset=1")
        assert r.status_code == 200
        assert "secret-argument" not in r.text and "ci-bot" not in r.text  # names and durations only
        prof = r.json()
        assert list(prof) == ["echo"]
        assert list(prof["echo"]) == STAGES
        assert all(s["calls"] == 6 and s["p50_us"] > 0 for s in prof["echo"].values())
        assert httpx2.get(gw.admin_base + "/debug/stages").json() == {}  # reset
        assert httpx2.get(gw.base + "/debug/stages").status_code == 404  # never on the agents' port
    finally:
        gw.stop()


def test_stages_are_not_served_when_off(tmp_path: Path) -> None:
    port = free_port()
    gw = start_gateway(tmp_path, default_config(port, tmp_path, stdio_upstream("echo", ECHO)), port)
    try:
        assert httpx2.get(gw.admin_base + "/debug/stages").status_code == 404
    finally:
        gw.stop()


def run_bench(script: str, tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    """Run a benchmark script with tiny numbers; its printed output and its --json report."""
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args, "--json", str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, json.loads((tmp_path / "out.json").read_text())


def test_the_benchmark_runs_with_tiny_numbers(tmp_path: Path) -> None:
    """A smoke run of bench/bench_calls.py: every path, both eras, lists, RSS and the stage profile are printed."""
    stdout, report = run_bench(
        "bench_calls.py",
        tmp_path,
        *("--calls", "3", "--seconds", "0.2", "--rounds", "1", "--concurrency", "2"),
        *("--sessions", "3", "--list-calls", "2"),
    )
    for needle in ("era 2025-11-25", "era 2026-07-28", "shipped policy -> HTTP", "allow-all -> stdio", "100 tools"):
        assert needle in stdout, stdout
    assert "per-stage profile" in stdout and "RSS" in stdout
    for era in ("legacy", "modern"):
        figures = report["eras"][era]
        for proxy in ("null proxy -> HTTP", "raw proxy -> HTTP"):  # each forwarder answered in both eras
            assert figures["paths"][proxy]["calls_per_s"] > 0
        cpu = figures["cpu_us_per_call"]
        assert cpu["shipped policy -> HTTP"]["middle"] > 0 and cpu["null proxy -> HTTP"]["echo"] > 0
        budget = figures["cpu_budget_at_0_9"]
        assert set(budget) == {"null proxy -> HTTP", "raw proxy -> HTTP", "allow-all -> HTTP", "shipped policy -> HTTP"}
        assert budget["shipped policy -> HTTP"]["spent_us"] == cpu["shipped policy -> HTTP"]["middle"]
    everywhere = sorted(os.sched_getaffinity(0))
    assert set(map(tuple, report["cpus"].values())) == {tuple(everywhere)}  # nothing pinned


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--pin needs two CPUs")
def test_the_benchmark_pins_the_gateways_to_a_core_of_their_own(tmp_path: Path) -> None:
    """--pin: the gateways with their upstream children, and the floors' forwarders, on the last CPU only; the HTTP
    echo on the others (read back from the kernel)."""
    stdout, report = run_bench(
        "bench_calls.py",
        tmp_path,
        *("--pin", "--block", "2", "--eras", "modern", "--calls", "2", "--seconds", "0.2", "--rounds", "1"),
        *("--concurrency", "2", "--sessions", "0", "--list-calls", "0"),
    )
    *others, last = sorted(os.sched_getaffinity(0))
    middles = ("allow-all", "shipped policy", "null HTTP server", "null proxy", "raw proxy")
    assert report["cpus"] == {name: [last] for name in middles} | {"echo": others}, stdout
    assert f"the gateways pinned to CPU {last}" in stdout
    assert report["eras"]["modern"]["paths"]["shipped policy -> stdio"]["calls_per_s"] > 0


def test_the_stack_benchmark_runs_with_tiny_numbers(tmp_path: Path) -> None:
    """A smoke run of bench/stack_bench.py: each installed server x client pair, the raw proxy and direct answer."""
    stdout, report = run_bench("stack_bench.py", tmp_path, "--seconds", "0.2", "--rounds", "1", "--concurrency", "2")
    have = {module: importlib.util.find_spec(module) is not None for module in ("granian", "pyreqwest")}
    for module, found in have.items():
        assert found or f"skipped: {module} is not installed" in stdout
    expected = {"direct", "raw proxy"} | {
        f"{server} + {client}"
        for server in ("uvicorn", "granian")
        for client in ("aiohttp", "pyreqwest")
        if have.get(server, True) and have.get(client, True)
    }
    assert set(report) == expected, stdout
    for name, figures in report.items():
        assert figures["calls_per_s"] > 0, name
        if name != "direct":
            assert figures["proxy_cpu_us_per_call"] > 0, name
