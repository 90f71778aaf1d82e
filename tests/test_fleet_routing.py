"""Membership and routing: real redis-server, real nginx (round robin), real gateway replicas.

An agent's 2025-era session works through round-robin nginx although its requests land on every replica: the
non-owners forward them to the owner (rendezvous hashing over live members), so all its session's records are
in the owner's audit log. 2026-era calls that need no worker are served where they land. A hop with a bad proof
is refused. Killing the owner: its session answers 404, the client re-initializes and continues on a live
replica at once (the dead owner's connection is refused, so it is routed around before its entry expires).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx2
import pytest
from conftest import KEYS, RunningGateway, free_port, mcp_client
from fleet_support import Proc, start_nginx, start_redis, start_replica
from mcp.shared.exceptions import MCPError

from gateway.fleet.membership import Member, rendezvous

pytestmark = pytest.mark.anyio
AFFINITY_PORT = free_port()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc, dict[str, RunningGateway]]]:
    work = tmp_path_factory.mktemp("fleet")
    redis = start_redis(work / "redis")
    ports = {"r1": free_port(), "r2": free_port(), "r3": free_port()}
    nginx_port_hint: list[str] = []
    replicas: dict[str, RunningGateway] = {}
    nginx: Proc | None = None
    try:
        # nginx's port is only known once it starts; Host is checked, so start nginx first on the ports.
        nginx = start_nginx(work / "nginx", list(ports.values()))
        nginx_port_hint.append(f"127.0.0.1:{nginx.port}")
        hosts = [*nginx_port_hint, f"127.0.0.1:{AFFINITY_PORT}"] + [f"127.0.0.1:{p}" for p in ports.values()]
        for rid, port in ports.items():
            replicas[rid] = start_replica(work / rid, rid, port, redis.port, hosts)
        yield redis, nginx, replicas
    finally:
        for gw in replicas.values():
            gw.stop()
        if nginx is not None:
            nginx.stop()
        redis.stop()


def owner_of(agent: str, replicas: dict[str, RunningGateway]) -> str:
    members = [Member(rid, f"http://127.0.0.1:{gw.port}") for rid, gw in replicas.items() if gw.proc.poll() is None]
    found = rendezvous(agent, members)
    assert found is not None
    return found.id


async def wait_members(gw: RunningGateway, n: int) -> None:
    for _ in range(100):
        async with httpx2.AsyncClient() as http:
            text = (await http.get(gw.admin_base + "/metrics")).text
        if f"mcp_gateway_fleet_members {float(n)}" in text:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the fleet never had {n} members")


def decisions(gw: RunningGateway, agent: str, action: str) -> list[dict]:
    return [
        r
        for r in gw.audit_records()
        if r.get("type") == "decision" and r.get("agent") == agent and r.get("action") == action
    ]


async def test_session_through_round_robin_nginx_is_served_by_its_owner(fleet) -> None:
    _, nginx, replicas = fleet
    for gw in replicas.values():
        await wait_members(gw, 3)
    url = f"http://127.0.0.1:{nginx.port}/mcp"
    for agent in ("ci-bot", "admin"):
        async with mcp_client(url, KEYS[agent][2], "legacy") as c:
            for _ in range(6):  # round robin: these land on every replica
                result = await c.call_tool("time__get_current_time", {"timezone": "UTC"})
                assert not result.is_error
            await c.list_tools()
        owner = owner_of(agent, replicas)
        for rid, gw in replicas.items():
            calls = decisions(gw, agent, "tools/call")
            assert (len(calls) >= 6) if rid == owner else not calls, (rid, owner, len(calls))
    forwarded = 0
    async with httpx2.AsyncClient() as http:
        for gw in replicas.values():
            for line in (await http.get(gw.admin_base + "/metrics")).text.splitlines():
                if line.startswith('mcp_gateway_fleet_hops_total{outcome="forwarded"}'):
                    forwarded += int(float(line.split()[-1]))
    assert forwarded > 0


async def test_modern_calls_without_a_worker_are_served_where_they_land(fleet) -> None:
    _, nginx, replicas = fleet
    url = f"http://127.0.0.1:{nginx.port}/mcp"
    async with mcp_client(url, KEYS["researcher"][2], "2026-07-28") as c:
        for _ in range(6):
            await c.call_tool("time__get_current_time", {"timezone": "UTC"})
    served = [rid for rid, gw in replicas.items() if decisions(gw, "researcher", "tools/call")]
    assert len(served) >= 2, served  # not all sent to one owner


async def test_affinity_variant_of_the_nginx_config(fleet, tmp_path) -> None:
    """deploy/nginx's documented optimisation: hash on the agent's credential; sessions work the same."""
    _, _, replicas = fleet
    nginx = start_nginx(
        tmp_path / "nginx", [gw.port for gw in replicas.values()], "hash $http_authorization consistent;", AFFINITY_PORT
    )
    try:
        conf = (tmp_path / "nginx" / "nginx.conf").read_text()
        assert re.search(r"(?m)^\s*hash \$http_authorization consistent;", conf)
        async with mcp_client(f"http://127.0.0.1:{nginx.port}/mcp", KEYS["admin"][2], "legacy") as c:
            for _ in range(4):
                assert not (await c.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
    finally:
        nginx.stop()


async def test_a_hop_with_a_bad_proof_is_refused(fleet) -> None:
    _, _, replicas = fleet
    gw = replicas["r1"]
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    async with httpx2.AsyncClient() as http:
        r = await http.post(
            gw.url,
            content=body,
            headers={
                "Authorization": f"Bearer {KEYS['ci-bot'][2]}",
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
                "Mcp-Gateway-Hop": "v1;r2;1;abc;127.0.0.1;" + "0" * 64,
            },
        )
    assert r.status_code == 403
    assert "invalid inter-replica hop" in r.text
    # nginx strips the header: only replicas send it to each other, so through the balancer it counts for nothing.
    async with mcp_client(
        f"http://127.0.0.1:{fleet[1].port}/mcp",
        KEYS["ci-bot"][2],
        "2026-07-28",
        headers={"Mcp-Gateway-Hop": "v1;r2;1;abc;127.0.0.1;" + "0" * 64},
    ) as c:
        await c.call_tool("time__get_current_time", {"timezone": "UTC"})


async def test_killing_the_owner_client_reinitializes_on_a_live_replica(fleet) -> None:
    _, nginx, replicas = fleet
    url = f"http://127.0.0.1:{nginx.port}/mcp"
    agent = "ci-bot"
    owner = owner_of(agent, replicas)
    async with mcp_client(url, KEYS[agent][2], "legacy") as c:
        assert not (await c.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
        replicas[owner].proc.kill()  # kill -9: no deregistration, its Redis entry lives until the TTL
        replicas[owner].proc.wait()
        with pytest.raises(MCPError):  # the session died with its replica: 404 (or a cut stream)
            await c.call_tool("time__get_current_time", {"timezone": "UTC"})
    # The spec's recovery: a new session. Its initialize is routed around the dead owner at once.
    async with mcp_client(url, KEYS[agent][2], "legacy") as c:
        for _ in range(4):
            assert not (await c.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
    new_owner = owner_of(agent, replicas)
    assert new_owner != owner
    assert decisions(replicas[new_owner], agent, "tools/call")
