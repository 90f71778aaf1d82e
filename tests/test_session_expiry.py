"""Session bindings follow the SDK's session lifetime: an id the SDK expired (idle) or ended (DELETE) is refused
with the SDK's own "Session not found" 404 on every method, and stops counting toward the agent's session cap."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.conftest import ECHO, RunningGateway, default_config, free_port, start_gateway, stdio_upstream
from tests.test_protocol_bad_input import headers, open_session, rpc


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("expiry")
    port = free_port()
    config = default_config(port, workdir, stdio_upstream("echo", ECHO))
    config = config.replace("[server]\n", "[server]\nsession_idle_timeout_s = 1.0\nmax_sessions_per_agent = 2\n", 1)
    gw = start_gateway(workdir, config, port)
    yield gw
    gw.stop()


def not_found(resp: httpx2.Response) -> bool:
    return resp.status_code == 404 and "Session not found" in resp.text


def wait_expired(gw: RunningGateway, sid: str) -> None:
    """Until the SDK has dropped the idle session (each probe restarts its idle countdown: probe sparsely)."""
    for _ in range(20):
        time.sleep(2.5)
        r = httpx2.post(gw.url, content=rpc(9, "ping"), headers=headers(sid=sid), timeout=10)
        if r.status_code == 404:
            return
    raise AssertionError("the session never expired")


def test_expired_sessions_are_unbound_and_uncounted(gateway: RunningGateway) -> None:
    first = open_session(gateway)
    second = open_session(gateway)
    third = httpx2.post(
        gateway.url,
        content=rpc(
            1,
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
        ),
        headers=headers(),
    )
    assert third.status_code == 429, third.text
    time.sleep(2.5)
    wait_expired(gateway, first)
    wait_expired(gateway, second)
    call = rpc(2, "tools/call", {"name": "echo__echo", "arguments": {"text": "x"}})
    for sid in (first, second):
        assert not_found(httpx2.post(gateway.url, content=call, headers=headers(sid=sid), timeout=10))
        assert not_found(httpx2.delete(gateway.url, headers=headers(sid=sid), timeout=10))
    # The expired sessions no longer count: the agent may open two again.
    again = [open_session(gateway), open_session(gateway)]
    assert len(set(again)) == 2
    for sid in again:
        r = httpx2.delete(gateway.url, headers=headers(sid=sid), timeout=10)
        assert r.status_code < 300, r.text
        assert not_found(httpx2.post(gateway.url, content=call, headers=headers(sid=sid), timeout=10))


class _Inner:
    """Stands for the dispatcher and the SDK: opens session "s1" on initialize, counts what reaches it."""

    def __init__(self) -> None:
        self.reached: list[str | None] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        sid = dict(scope["headers"]).get(b"mcp-session-id")
        self.reached.append(sid.decode() if sid else None)
        extra = [] if sid else [(b"mcp-session-id", b"s1")]
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json"), *extra]}
        )
        await send({"type": "http.response.body", "body": b"{}"})


@pytest.mark.anyio
async def test_a_binding_is_checked_against_the_sdk_on_every_use() -> None:
    """The binding stage asks the SDK on use: an id it no longer holds is refused (the SDK's 404) and unbound
    at once, not when some later session opens."""
    from gateway.http.authenticate import AGENT_KEY
    from gateway.http.headers import ParseHeaders
    from gateway.http.sessions import SessionBinding
    from gateway.identity import Agent

    live: set[str] = set()
    inner = _Inner()
    binding = SessionBinding(inner, lambda: live, 1, lambda _: None)
    binding._last_prune = float("inf")  # no periodic prune during the test: only the check on use

    async def with_agent(scope: Any, receive: Any, send: Any) -> None:
        scope["state"][AGENT_KEY] = Agent("ci-bot", "platform", ("ci",), "api_key")
        await binding(scope, receive, send)

    live.add("s1")
    transport = httpx2.ASGITransport(app=ParseHeaders(with_agent))
    async with httpx2.AsyncClient(transport=transport, base_url="http://gw") as client:
        init = rpc(
            1,
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
        )
        assert (await client.post("/mcp", content=init, headers=headers())).status_code == 200
        assert "s1" in binding.sessions
        assert (await client.post("/mcp", content=rpc(2, "ping"), headers=headers(sid="s1"))).status_code == 200
        live.discard("s1")  # the SDK expires the session
        gone = await client.post("/mcp", content=rpc(3, "ping"), headers=headers(sid="s1"))
        assert not_found(gone)
        assert inner.reached == [None, "s1"]
        assert "s1" not in binding.sessions and not binding._open
