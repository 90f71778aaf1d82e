"""``[[limits]]``: fleet-wide in Redis (real redis-server, nginx round robin, two replicas) and in process.

A per-agent limit of N calls per minute allows at most N across all replicas although the calls land on both;
every refusal is a JSON-RPC error naming the limit with retry-after data, counted and audited (decision and
outcome ``limited``); the policy input carries ``usage``. Redis down: ``on_redis_error = "deny"`` refuses,
``"local"`` counts on the replica alone, both counted. Without ``[fleet]``: token bucket, concurrent calls
(slots given back when the call ends) and sessions (HTTP 429 with Retry-After at initialize).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx2
import pytest
from conftest import ECHO, KEYS, RunningGateway, default_config, free_port, mcp_client, start_gateway, stdio_upstream
from fleet_support import Proc, start_nginx, start_redis, start_replica
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.anyio

PER_MINUTE = 5
LIMITS = f"""
[[limits]]
name = "ci-per-minute"
agents = ["ci-bot"]
tools = ["time__*"]
calls_per_minute = {PER_MINUTE}

[[limits]]
name = "ci-one-slow"
agents = ["ci-bot"]
tools = ["echo__*"]
concurrent_calls = 1

[[limits]]
name = "admin-bucket"
agents = ["admin"]
calls_per_second = 0.001
burst = 2
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc, dict[str, RunningGateway]]]:
    work = tmp_path_factory.mktemp("fleetlim")
    redis = start_redis(work / "redis")
    ports = {"a": free_port(), "b": free_port()}
    replicas: dict[str, RunningGateway] = {}
    nginx = start_nginx(work / "nginx", list(ports.values()))
    try:
        hosts = [f"127.0.0.1:{nginx.port}"] + [f"127.0.0.1:{p}" for p in ports.values()]
        modes = {"a": "deny", "b": "local"}
        for rid, port in ports.items():
            extra = f'on_redis_error = "{modes[rid]}"'
            ups = stdio_upstream("time", ["mcp-server-time", "--local-timezone", "UTC"]) + stdio_upstream("echo", ECHO)
            replicas[rid] = start_replica(
                work / rid, rid, port, redis.port, hosts, fleet_extra=extra, extra=LIMITS, upstreams=ups
            )
        yield redis, nginx, replicas
    finally:
        for gw in replicas.values():
            gw.stop()
        nginx.stop()
        redis.stop()


def metric(gw: RunningGateway, prefix: str) -> float:
    text = httpx2.get(gw.admin_base + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def records(gw: RunningGateway, agent: str) -> list[dict]:
    return [r for r in gw.audit_records() if r.get("agent") == agent]


async def calls(url: str, key: str, n: int, tool: str = "time__get_current_time") -> tuple[int, list[MCPError]]:
    ok, refused = 0, []
    async with mcp_client(url, key, "2026-07-28") as c:  # 2026 era, no worker: served where each call lands
        for _ in range(n):
            try:
                result = await c.call_tool(tool, {"timezone": "UTC"})
                assert not result.is_error, result
                ok += 1
            except MCPError as exc:
                refused.append(exc)
    return ok, refused


async def test_per_minute_limit_holds_across_replicas(fleet) -> None:
    _, nginx, replicas = fleet
    if time.time() % 60 > 40:  # keep the calls inside one minute window
        await asyncio.sleep(61 - time.time() % 60)
    url = f"http://127.0.0.1:{nginx.port}/mcp"
    ok, refused = await calls(url, KEYS["ci-bot"][2], 12)
    assert ok == PER_MINUTE and len(refused) == 12 - PER_MINUTE
    err = refused[0]
    assert err.code == -32000 and "ci-per-minute" in err.message
    assert err.data["limit"] == "ci-per-minute" and err.data["bound"] == "calls_per_minute"
    assert 1 <= err.data["retry_after_s"] <= 60
    served = [rid for rid, gw in replicas.items() if any(r.get("outcome") == "ok" for r in records(gw, "ci-bot"))]
    assert len(served) == 2, served  # the calls really landed on both replicas
    limited = [r for gw in replicas.values() for r in records(gw, "ci-bot") if r.get("outcome") == "limited"]
    assert len(limited) == 12 - PER_MINUTE
    assert sum(metric(gw, 'mcp_gateway_limited_total{limit="ci-per-minute"}') for gw in replicas.values()) == 7
    usages = [
        r["input"]["usage"]["ci-per-minute"]
        for gw in replicas.values()
        for r in records(gw, "ci-bot")
        if r.get("type") == "decision" and r.get("allow") and r.get("action") == "tools/call"
    ]
    assert sorted(u["used"] for u in usages) == list(range(1, PER_MINUTE + 1))
    assert all(u["limit"] == PER_MINUTE and u["window_s"] == 60 for u in usages)


async def test_token_bucket_counts_every_request_kind_fleet_wide(fleet) -> None:
    nginx = fleet[1]
    url = f"http://127.0.0.1:{nginx.port}/mcp"
    async with mcp_client(url, KEYS["admin"][2], "2026-07-28") as c:
        await c.list_tools()  # one of the burst of 2
        await c.call_tool("time__get_current_time", {"timezone": "UTC"})
        with pytest.raises(MCPError) as err:
            await c.list_tools()
    assert err.value.data["limit"] == "admin-bucket" and err.value.data["bound"] == "calls_per_second"
    assert err.value.data["retry_after_s"] > 100


async def test_concurrent_calls_fleet_wide_and_given_back(fleet) -> None:
    _, nginx, replicas = fleet
    url = f"http://127.0.0.1:{nginx.port}/mcp"
    key = KEYS["ci-bot"][2]

    def slow_decided() -> bool:
        return any(
            r.get("tool") == "slow" and r.get("type") == "decision"
            for gw in replicas.values()
            for r in gw.audit_records()
        )

    async with mcp_client(url, key, "2026-07-28") as c, mcp_client(url, key, "2026-07-28") as d:
        slow = asyncio.create_task(c.call_tool("echo__slow", {"seconds": 10}))
        for _ in range(200):
            if slow_decided():
                break
            await asyncio.sleep(0.05)
        for _ in range(3):  # round robin: these land on both replicas; the one slot is taken on either
            with pytest.raises(MCPError) as err:
                await d.call_tool("echo__echo", {"text": "x"})
            assert err.value.data["limit"] == "ci-one-slow" and err.value.data["bound"] == "concurrent_calls"
        await slow
        for _ in range(50):  # the slot is given back after the call, off its path: soon
            try:
                assert not (await d.call_tool("echo__echo", {"text": "x"})).is_error
                break
            except MCPError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the concurrent-call slot was never given back")


async def test_redis_down_denies_or_counts_locally_as_configured(fleet) -> None:
    redis, _, replicas = fleet
    redis.stop()
    # Straight to each replica (2026 era: served where it lands): a denies, b counts on its own.
    _, refused = await calls(replicas["a"].url, KEYS["ci-bot"][2], 1)
    assert refused and refused[0].data["limit"] == "redis_unavailable"
    assert metric(replicas["a"], 'mcp_gateway_limit_redis_errors_total{mode="deny"}') >= 1
    ok, refused = await calls(replicas["b"].url, KEYS["ci-bot"][2], PER_MINUTE + 1)
    assert ok >= 1 and len(refused) >= 1 and refused[-1].data["limit"] == "ci-per-minute"
    assert metric(replicas["b"], 'mcp_gateway_limit_redis_errors_total{mode="local"}') >= 1


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    work = tmp_path_factory.mktemp("lim1")
    port = free_port()
    limits = """
[[limits]]
name = "one-at-a-time"
agents = ["ci-bot"]
tools = ["echo__slow", "echo__echo"]
concurrent_calls = 1

[[limits]]
name = "one-session"
agents = ["admin"]
sessions = 1
"""
    gw = start_gateway(work, default_config(port, work, stdio_upstream("echo", ECHO), extra=limits), port)
    yield gw
    gw.stop()


async def test_concurrent_calls_without_fleet(single: RunningGateway) -> None:
    async with mcp_client(single.url, KEYS["ci-bot"][2]) as c, mcp_client(single.url, KEYS["ci-bot"][2]) as d:
        slow = asyncio.create_task(c.call_tool("echo__slow", {"seconds": 10}))
        for _ in range(200):
            if any(r.get("tool") == "slow" for r in single.audit_records() if r.get("type") == "decision"):
                break
            await asyncio.sleep(0.05)
        with pytest.raises(MCPError) as err:
            await d.call_tool("echo__echo", {"text": "x"})
        assert err.value.data["limit"] == "one-at-a-time" and err.value.data["bound"] == "concurrent_calls"
        await slow
        assert not (await d.call_tool("echo__echo", {"text": "x"})).is_error  # the slot came back


async def test_sessions_limit_answers_429_with_retry_after(single: RunningGateway) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    headers = {"Authorization": f"Bearer {KEYS['admin'][2]}", "Accept": "application/json, text/event-stream"}
    async with mcp_client(single.url, KEYS["admin"][2]) as c:
        await c.list_tools()
        async with httpx2.AsyncClient() as http:
            r = await http.post(single.url, json=init, headers=headers)
    assert r.status_code == 429 and r.headers["retry-after"] == "5"
    assert r.json()["error"]["data"] == {"limit": "one-session", "bound": "sessions", "retry_after_s": 5}
