"""Malformed and hostile upstream messages, through a real gateway with the real SDK client: whatever an upstream
writes, the gateway keeps its connection (and itself) up, and the agent gets an answer or a clear error."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import RunningGateway, default_config, free_port, mcp_client, start_gateway, stdio_upstream
from tests.test_resilience_upstream import KEY, RECORDER, allow_all_policy

pytestmark = pytest.mark.anyio


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("malformed")
    http_port, port = free_port(), free_port()
    remote = subprocess.Popen(
        [*RECORDER, "--http", str(http_port)],
        env={"RECORD_FILE": str(workdir / "remote.jsonl"), "PATH": "/usr/bin:/bin"},
    )
    try:
        wait_port(http_port)
        upstreams = (
            stdio_upstream("rec", RECORDER, f'env = {{ RECORD_FILE = "{workdir / "rec.jsonl"}" }}\n')
            + f'[[upstreams]]\nname = "remote"\ntransport = "http"\nurl = "http://127.0.0.1:{http_port}/mcp"\n'
        )
        gw = start_gateway(workdir, default_config(port, workdir, upstreams, policy=allow_all_policy(workdir)), port)
        yield gw
        gw.stop()
    finally:
        remote.terminate()
        remote.wait(10)


def text(result: Any) -> str:
    return str(result.content[0].text)


def received(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


async def test_malformed_lines_are_dropped_and_the_connection_stays_up(gateway: RunningGateway) -> None:
    lines = [
        "this is a log line on stdout, not JSON",
        "[1, 2, 3]",
        '{"jsonrpc": "2.0", "method": ["not", "a", "string"], "params": {}}',  # a notification
        '{"jsonrpc": "2.0", "method": {"an": "object"}}',
        '{"jsonrpc": "2.0", "id": "odd-1", "method": 7}',  # a request: answered with an error, not relayed
        '{"jsonrpc": "2.0", "id": 123456789, "result": {}}',  # a response to nothing
    ]
    async with mcp_client(gateway.url, KEY) as c:
        assert text(await c.call_tool("rec__raw", {"lines": lines})) == "raw"
        assert text(await c.call_tool("rec__echo", {"text": "still here"})) == "still here"
    answers = [m for m in received(gateway.workdir / "rec.jsonl") if m.get("id") == "odd-1"]
    assert answers and answers[0]["error"]["code"] == -32600, answers
    ready = httpx2.get(gateway.admin_base + "/readyz").json()["upstreams"]["rec"]
    assert ready["up"] and not ready["error"]


async def test_an_error_with_a_malformed_code_still_reaches_the_agent(gateway: RunningGateway) -> None:
    bad = '{"jsonrpc": "2.0", "id": {id}, "error": {"code": "not-a-number", "message": "the upstream says no"}}'
    async with mcp_client(gateway.url, KEY) as c:
        with pytest.raises(MCPError) as err:
            await c.call_tool("rec__raw", {"lines": [bad], "answer": False})
        assert "the upstream says no" in str(err.value)
        assert text(await c.call_tool("rec__echo", {"text": "fine"})) == "fine"


async def test_an_http_upstream_that_refuses_the_gateways_reply_does_not_take_it_down(
    gateway: RunningGateway,
) -> None:
    """The upstream pings the gateway mid-call, then answers the gateway's reply with HTTP 400."""
    async with mcp_client(gateway.url, KEY) as c:
        assert text(await c.call_tool("remote__ask", {"refuse": True})) == "ask"
        assert text(await c.call_tool("remote__ask", {})) == "ask"
    assert httpx2.get(gateway.base + "/healthz").status_code == 200
    replies = [m for m in received(gateway.workdir / "remote.jsonl") if "method" not in m]
    assert {str(m["id"]).split("-")[0] for m in replies} == {"refused", "asked"}
    assert all(m.get("result") == {} for m in replies)  # both pings were answered


async def test_an_http_stream_that_ends_without_the_answer_fails_the_call_at_once(gateway: RunningGateway) -> None:
    async with mcp_client(gateway.url, KEY) as c:
        with pytest.raises(MCPError) as err:
            await c.call_tool("remote__raw", {"lines": [], "answer": False})
        assert "upstream 'remote'" in str(err.value) and "without answering it" in str(err.value)
        assert text(await c.call_tool("remote__echo", {"text": "next"})) == "next"
