"""The HTTP upstream client sends each request (head and body) in one write on a pooled keep-alive connection,
on both clients: aiohttp (the default) and httpx2 (upstreams with OAuth)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import pytest

from connectors.exchange import AiohttpExchange
from connectors.http import HttpConnector
from connectors.httpx2_exchange import Httpx2Exchange, _CoalescingBackend
from tests.conftest import REPO, echo_http_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def echo_url() -> Iterator[str]:
    with echo_http_server() as url:
        yield url


async def _calls(conn: HttpConnector, n: int) -> None:
    for i in range(n):
        result = await conn.request("tools/call", {"name": "echo", "arguments": {"text": f"t{i}"}}, 10)
        assert result["content"][0]["text"] == f"t{i}"


async def test_aiohttp_one_write_per_request_on_one_connection(echo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = 0
    transport = asyncio.selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
    write, writelines = transport.write, transport.writelines

    def counted_write(self: Any, data: Any) -> None:
        nonlocal writes
        writes += 1
        write(self, data)

    def counted_writelines(self: Any, data: Any) -> None:
        nonlocal writes
        writes += 1
        writelines(self, data)

    monkeypatch.setattr(transport, "write", counted_write)  # every socket write of this process (the server is not)
    monkeypatch.setattr(transport, "writelines", counted_writelines)
    connects = 0
    loop_class = type(asyncio.get_running_loop())
    create_connection = loop_class.create_connection

    async def counted_connection(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal connects
        connects += 1
        return await create_connection(self, *args, **kwargs)

    monkeypatch.setattr(loop_class, "create_connection", counted_connection)  # every connection this process opens
    async with anyio.create_task_group() as tg:
        conn = HttpConnector("echo", echo_url)
        assert isinstance(conn._http, AiohttpExchange)
        await conn.start(tg)
        assert await conn.wait_ready(30)
        await _calls(conn, 1)
        before, opened = writes, connects
        assert opened >= 1  # the count sees aiohttp's connections
        await _calls(conn, 20)
        # Head and body in one write (two each if they went apart); the standalone GET may add one.
        assert 20 <= writes - before <= 21
        assert connects == opened  # kept alive and reused: no connection or handshake per call
        await conn.aclose()
        tg.cancel_scope.cancel()


async def test_httpx2_one_send_per_request_on_one_connection(echo_url: str) -> None:
    async with anyio.create_task_group() as tg:
        conn = HttpConnector("echo", echo_url)
        conn._http = exchange = Httpx2Exchange()  # what an upstream with oauth gets
        assert exchange.coalescing
        await conn.start(tg)
        assert await conn.wait_ready(30)
        backend = exchange.client._transport._pool._network_backend  # type: ignore[attr-defined]
        assert isinstance(backend, _CoalescingBackend)
        await _calls(conn, 1)
        before, connects = backend.sends, backend.connects
        await _calls(conn, 20)
        # Head and body together (two writes each without coalescing); the standalone GET may add one.
        assert 20 <= backend.sends - before <= 21
        assert backend.connects == connects
        await conn.aclose()
        tg.cancel_scope.cancel()


def test_an_upstream_with_oauth_goes_through_httpx2() -> None:
    conn = HttpConnector("echo", "http://127.0.0.1:9/mcp", auth=httpx2.BasicAuth("u", "p"))
    assert isinstance(conn._http, Httpx2Exchange)


_CONNECTOR_FIRST = """
from pathlib import Path
from connectors.exchange import _import_aiohttp
_import_aiohttp()  # an HTTP upstream connected before anything loaded rego-cpp
from gateway.policy.engines import compile_policy
from gateway.policy.loader import load_policy
from gateway.policy.tables import load_tables
policy = compile_policy(Path("rego"), "gateway/decision", "regopy")
print(all(policy.evaluate_input(c.input).error is None for c in load_tables(load_policy(Path("rego")))))
"""


def test_regopy_decides_after_an_http_upstream_loaded_aiohttp() -> None:
    """aiohttp's C++ frozenlist, loaded before rego-cpp, corrupted rego-cpp's heap: the connector's aiohttp uses
    frozenlist's pure-Python form."""
    out = subprocess.run(
        [sys.executable, "-c", _CONNECTOR_FIRST], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"
