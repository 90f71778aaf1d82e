"""The HTTP upstream client sends each request (head and body) in one write on a pooled keep-alive connection."""

from __future__ import annotations

import subprocess
import sys
import time

import anyio
import httpx2
import pytest

from connectors.http import HttpConnector, _CoalescingBackend
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.anyio

ECHO_HTTP = [sys.executable, str(REPO / "tests" / "fixtures" / "echo_server.py"), "--transport", "http", "--port"]


async def test_one_send_per_request_on_one_connection() -> None:
    port = free_port()
    server = subprocess.Popen([*ECHO_HTTP, str(port)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                httpx2.get(f"http://127.0.0.1:{port}/mcp", timeout=0.5)
                break
            except httpx2.HTTPError:
                time.sleep(0.1)
        async with anyio.create_task_group() as tg:
            conn = HttpConnector("echo", f"http://127.0.0.1:{port}/mcp")
            assert conn.coalescing
            await conn.start(tg)
            assert await conn.wait_ready(30)
            backend = conn._client._transport._pool._network_backend  # type: ignore[attr-defined]
            assert isinstance(backend, _CoalescingBackend)
            await conn.request("tools/call", {"name": "echo", "arguments": {"text": "warm"}}, 10)
            before, connects = backend.sends, backend.connects
            for i in range(20):
                result = await conn.request("tools/call", {"name": "echo", "arguments": {"text": f"t{i}"}}, 10)
                assert result["content"][0]["text"] == f"t{i}"
            # Head and body together (two writes each without coalescing); the standalone GET may add one.
            assert 20 <= backend.sends - before <= 21
            assert backend.connects == connects  # kept alive and reused: no connection or handshake per call
            await conn.aclose()
            tg.cancel_scope.cancel()
    finally:
        server.terminate()
        server.wait()
