"""An agent's contained worker (and workspace) stays on its owner: 2026-era calls of a built-in ``files`` upstream
through round-robin nginx land on both replicas, yet each is forwarded to the owner, so what one call writes
the next one reads, and the workspace exists on one replica only."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from fleet_support import start_nginx, start_redis, start_replica

from gateway.fleet.membership import Member, rendezvous
from tests.conftest import KEYS, RunningGateway, free_port, mcp_client
from tests.test_containment_gateway import traversable_tmp
from tests.test_resilience_upstream import allow_all_policy

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("bwrap"), reason="needs root and bubblewrap"),
]


def containment(work: str, uid_base: int) -> str:
    return f"""
[containment]
workspace_root = "{work}/workspaces"
uid_base = {uid_base}
uid_count = 20

[containment.profiles.box]
tier = "sandbox"
read_only = ["/usr"]
read_write = ["{{workspace}}"]
env = {{ PATH = "/usr/bin:/bin" }}
memory_mb = 256
"""


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[int, dict[str, RunningGateway]]]:
    work = traversable_tmp("mcpgw-fleet-workers-")
    redis = start_redis(work / "redis")
    ports = {"w1": free_port(), "w2": free_port()}
    nginx = start_nginx(work / "nginx", list(ports.values()))
    replicas: dict[str, RunningGateway] = {}
    upstream = '[[upstreams]]\nname = "files"\ntransport = "builtin"\ntools = "files"\ncontainment = "box"\n'
    policy = allow_all_policy(work)
    try:
        hosts = [f"127.0.0.1:{p}" for p in [nginx.port, *ports.values()]]
        for n, (rid, port) in enumerate(ports.items()):
            extra = containment(str(work / rid), 330000 + 100 * n)
            replicas[rid] = start_replica(
                work / rid, rid, port, redis.port, hosts, extra=extra, upstreams=upstream, policy=policy
            )
        yield nginx.port, replicas
    finally:
        for gw in replicas.values():
            gw.stop()
        nginx.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


async def test_worker_calls_go_to_the_owner_so_the_workspace_is_one(fleet) -> None:
    nginx_port, replicas = fleet
    url = f"http://127.0.0.1:{nginx_port}/mcp"
    async with mcp_client(url, KEYS["ci-bot"][2], "2026-07-28") as c:
        for i in range(4):  # round robin: half of these land on the other replica
            wrote = await c.call_tool("files__write_file", {"path": f"n{i}.txt", "content": str(i)})
            assert not wrote.is_error, wrote.content
            read = await c.call_tool("files__read_file", {"path": f"n{i}.txt"})
            assert not read.is_error and read.content[0].text == str(i)  # type: ignore[union-attr]
    members = [Member(rid, f"http://127.0.0.1:{gw.port}") for rid, gw in replicas.items()]
    owner = rendezvous("ci-bot", members)
    assert owner is not None
    for rid, gw in replicas.items():
        calls = [r for r in gw.audit_records() if r.get("type") == "decision" and r.get("action") == "tools/call"]
        assert (len(calls) == 8) if rid == owner.id else not calls, (rid, len(calls))
