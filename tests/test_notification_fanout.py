"""A shared upstream's notifications reach each agent session through one bounded, ordered mailbox: a flood towards
an agent that stops reading is dropped (oldest first, counted), never piled up as tasks and memory, and other
agents' calls and notifications go on; an agent that reads gets them all, in order. Real gateway, real SDK
clients, a real upstream fixture that sends its notifications in one burst."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp.types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import ECHO, KEYS, REPO, RunningGateway, default_config, free_port, start_gateway, stdio_upstream

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]
RECORDER = [sys.executable, str(REPO / "tests" / "fixtures" / "recording_server.py")]
UPDATED = "notifications/resources/updated"
WATCHED = "rec://watched"
POLICY = """package gateway
import rego.v1

default decision := {"allow": false, "reasons": ["not an api key"]}

decision := {"allow": true, "reasons": []} if input.agent.auth == "api_key"
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("fanout")
    policy = workdir / "rego"
    policy.mkdir()
    (policy / "p.rego").write_text(POLICY)
    port = free_port()
    upstream = stdio_upstream("rec", RECORDER, f'env = {{ RECORD_FILE = "{workdir / "rec.jsonl"}" }}\n')
    upstream += stdio_upstream("echo", ECHO)  # shared: one reader serves every agent
    gateway = start_gateway(workdir, default_config(port, workdir, upstream, policy=policy), port)
    yield gateway
    gateway.stop()


@asynccontextmanager
async def client(url: str, agent: str, handler: Any) -> AsyncIterator[Client]:
    async def guarded(message: Any) -> None:  # handlers also receive transport exceptions
        if not isinstance(message, Exception):
            await handler(getattr(message, "root", message))

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEYS[agent][2]}"}, timeout=60)
    async with (
        http,
        Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None, message_handler=guarded) as c,
    ):
        yield c


def seqs_into(seen: list[int]) -> Any:
    async def collect(message: Any) -> None:
        if getattr(message, "method", None) == UPDATED:
            seen.append(int((message.params.meta or {}).get("seq", -1)))

    return collect


def dropped(gw: RunningGateway, kind: str = UPDATED) -> float:
    for line in httpx2.get(gw.admin_base + "/metrics", timeout=5).text.splitlines():
        if line.startswith("mcp_gateway_notifications_dropped_total{") and f'kind="{kind}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def text(result: types.CallToolResult) -> str:
    return str(result.content[0].text)  # type: ignore[union-attr]


async def until(check: Any, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        await anyio.sleep(0.1)
    return check()


async def burst(c: Client, count: int, pad: int = 0) -> None:
    params = {"uri": WATCHED, "_meta": {"pad": "x" * pad}}
    assert text(await c.call_tool("rec__notify", {"method": UPDATED, "params": params, "count": count})) == "notify"


async def test_an_agent_that_reads_gets_every_update_in_order(gw: RunningGateway) -> None:
    seen: list[int] = []
    before = dropped(gw)
    async with client(gw.url, "ci-bot", seqs_into(seen)) as c:
        await c.subscribe_resource(WATCHED)
        await burst(c, 40)
        assert await until(lambda: len(seen) >= 40), seen
        await c.unsubscribe_resource(WATCHED)
    assert seen == list(range(40))
    assert dropped(gw) == before


async def test_a_flood_towards_an_agent_that_stops_reading_is_dropped_while_others_go_on(gw: RunningGateway) -> None:
    """The stuck agent reads one update and then nothing: the gateway keeps at most a small buffer for it (the
    oldest are dropped and counted), the shared upstream's reader is never held up, the agent that reads gets the
    newest update and its calls answer correctly, and the stuck agent, once it reads again, gets the newest too."""
    count, pad = 3000, 4096  # ~12 MB: more than the socket buffers between the gateway and the stuck agent hold
    release, first = anyio.Event(), anyio.Event()
    stuck_seen: list[int] = []
    reader_seen: list[int] = []

    async def stuck(message: Any) -> None:
        if getattr(message, "method", None) == UPDATED:
            stuck_seen.append(int((message.params.meta or {}).get("seq", -1)))
            first.set()
            await release.wait()

    before = dropped(gw)
    async with client(gw.url, "ci-bot", stuck) as slow, client(gw.url, "admin", seqs_into(reader_seen)) as reader:
        try:
            await slow.subscribe_resource(WATCHED)
            await reader.subscribe_resource(WATCHED)
            await burst(reader, count, pad)
            assert await until(lambda: dropped(gw) > before), "nothing was dropped for the agent that stopped reading"
            for i in range(5):  # the other agent's calls stay correct while the stuck agent's buffer is full
                result = await reader.call_tool("rec__echo", {"text": f"still here {i}"})
                assert text(result) == f"still here {i}"
            assert await until(lambda: bool(reader_seen) and reader_seen[-1] == count - 1), reader_seen[-5:]
            assert reader_seen == sorted(set(reader_seen))  # in order, none twice
            assert first.is_set()
        finally:
            release.set()
        assert await until(lambda: bool(stuck_seen) and stuck_seen[-1] == count - 1), stuck_seen[-5:]
        assert stuck_seen == sorted(set(stuck_seen))
        assert len(stuck_seen) < count  # what the stuck agent missed was dropped, not kept for it
        await reader.unsubscribe_resource(WATCHED)
        await slow.unsubscribe_resource(WATCHED)


async def test_progress_an_agent_does_not_read_never_holds_up_a_shared_upstream(gw: RunningGateway) -> None:
    """A shared upstream reports progress (3,000 reports of 4 KiB) to an agent that stops reading after the first:
    the reports go through a bounded mailbox of the call (oldest dropped, counted), so the upstream's reader goes
    on and another agent's call to it is answered; once the agent reads again it gets the newest report, then the
    result. Before, every report was kept for it (and, inline in the upstream's reader, a full stream of the agent
    held up that reader, which serves every agent's calls)."""
    steps = 3000
    release, first = anyio.Event(), anyio.Event()
    seen: list[float] = []
    got: list[str] = []

    async def stuck(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)
        first.set()
        await release.wait()

    before = dropped(gw, "notifications/progress")

    async def slow_call(c: Client) -> None:
        result = await c.call_tool("echo__slow", {"seconds": 0, "steps": steps, "pad": 4096}, progress_callback=stuck)
        got.append(text(result))

    async with client(gw.url, "ci-bot", seqs_into([])) as slow, client(gw.url, "admin", seqs_into([])) as other:
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_call, slow)
            try:
                with anyio.fail_after(60):  # a guard against a hang, not a timing assertion
                    await first.wait()
                    assert await until(lambda: dropped(gw, "notifications/progress") > before), "nothing dropped"
                    assert text(await other.call_tool("echo__echo", {"text": "not held up"})) == "not held up"
            finally:
                release.set()
        assert got == ["slept 0.0"]
        assert seen == sorted(set(seen)) and seen[-1] == steps  # in order, and the newest before the result
        assert len(seen) < steps
