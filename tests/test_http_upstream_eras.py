"""A call to an HTTP upstream that offers the stateless 2026-07-28 era leaves the session: one plain request with
the era's envelope and routing headers (``Mcp-Method``, ``Mcp-Name``, ``Mcp-Param-*``), which the server checks.
Lists, notifications and per-session connections stay in the 2025-era session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from connectors.exchange import Response
from connectors.http import HttpConnector
from tests.conftest import echo_http_server

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def echo_url() -> Iterator[str]:
    with echo_http_server("--header-tool") as url:
        yield url


class Recorded:
    """The headers of every request the connector sends (its real exchange does the sending)."""

    def __init__(self, conn: HttpConnector):
        self.sent: list[tuple[str, dict[str, str]]] = []
        inner = conn._http.open

        @asynccontextmanager
        async def open(
            method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
        ) -> AsyncIterator[Response]:
            self.sent.append((method, {k.lower(): v for k, v in headers.items()}))
            async with inner(method, url, headers, body) as resp:
                yield resp

        conn._http.open = open  # type: ignore[method-assign]

    def posts(self, method: str) -> list[dict[str, str]]:
        return [h for m, h in self.sent if m == "POST" and h.get("mcp-method") == method]


@asynccontextmanager
async def connected(url: str, stateless: bool = True) -> AsyncIterator[tuple[HttpConnector, Recorded]]:
    async with anyio.create_task_group() as tg:
        conn = HttpConnector("echo", url)
        conn.stateless_calls = stateless
        recorded = Recorded(conn)
        await conn.start(tg)
        assert await conn.wait_ready(30)
        try:
            yield conn, recorded
        finally:
            await conn.aclose()
            tg.cancel_scope.cancel()


async def test_a_listed_tool_is_called_statelessly(echo_url: str) -> None:
    async with connected(echo_url) as (conn, recorded):
        assert conn._modern == "2026-07-28"
        await conn.request("tools/list", {}, 10)
        result = await conn.request("tools/call", {"name": "echo", "arguments": {"text": "hi"}}, 10)
        assert result["content"][0]["text"] == "hi"
        assert "resultType" not in result  # a 2025-era agent gets the result it knows
        [call] = recorded.posts("tools/call")
        assert "mcp-session-id" not in call
        assert call["mcp-protocol-version"] == "2026-07-28"
        assert call["mcp-name"] == "echo"


async def test_mcp_param_headers_are_sent_as_the_schema_declares(echo_url: str) -> None:
    async with connected(echo_url) as (conn, recorded):
        await conn.request("tools/list", {}, 10)
        result = await conn.request("tools/call", {"name": "regional", "arguments": {"region": "eu-west"}}, 10)
        assert result["content"][0]["text"] == "region eu-west"  # the server checks the header against the body
        [call] = recorded.posts("tools/call")
        assert call["mcp-param-region"] == "eu-west"


async def test_a_tool_never_listed_is_called_in_the_session(echo_url: str) -> None:
    async with connected(echo_url) as (conn, recorded):
        result = await conn.request("tools/call", {"name": "echo", "arguments": {"text": "hi"}}, 10)
        assert result["content"][0]["text"] == "hi"
        assert recorded.posts("tools/call") == []
        sessions = [h for m, h in recorded.sent if m == "POST" and "mcp-session-id" in h]
        assert sessions  # the call went in the 2025-era session


async def test_a_per_session_connection_keeps_its_calls_in_the_session(echo_url: str) -> None:
    async with connected(echo_url, stateless=False) as (conn, recorded):
        assert conn._modern is None
        await conn.request("tools/list", {}, 10)
        await conn.request("tools/call", {"name": "echo", "arguments": {"text": "hi"}}, 10)
        assert recorded.posts("tools/call") == [] and recorded.posts("server/discover") == []


async def test_an_agents_own_era_meta_does_not_make_a_call_stateless(echo_url: str) -> None:
    """Only the connector's own envelope marks a stateless request: an agent's _meta passed through does not."""
    meta: dict[str, Any] = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "agent", "version": "1"},
    }
    async with connected(echo_url) as (conn, recorded):
        result = await conn.request("tools/call", {"name": "echo", "arguments": {"text": "x"}, "_meta": meta}, 10)
        assert result["content"][0]["text"] == "x"
        assert recorded.posts("tools/call") == []


async def test_progress_reaches_the_gateway_on_a_stateless_call(echo_url: str) -> None:
    seen: list[dict[str, Any]] = []

    async def on_progress(params: dict[str, Any]) -> None:
        seen.append(params)

    async with connected(echo_url) as (conn, recorded):
        await conn.request("tools/list", {}, 10)
        result = await conn.request("tools/call", {"name": "slow", "arguments": {"seconds": 0.2}}, 10, on_progress)
        assert result["content"][0]["text"] == "slept 0.2"
        assert len(recorded.posts("tools/call")) == 1
        assert [p["progress"] for p in seen] == [1, 2, 3, 4]
