"""Bad input from agents, sent raw over real HTTP to a real gateway: each gets a clear protocol error, nothing
reaches the upstream (a recording server proves it), nothing leaks, and the gateway keeps serving."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from tests.conftest import KEYS, RunningGateway, default_config, free_port, start_gateway, stdio_upstream
from tests.test_resilience_upstream import RECORDER, allow_all_policy

LIMIT = 65536


def headers(agent: str = "ci-bot", sid: str | None = None) -> dict[str, str]:
    h = {
        "Authorization": f"Bearer {KEYS[agent][2]}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    if sid is not None:
        h["Mcp-Session-Id"] = sid
    return h


def rpc(rid: Any, method: str, params: dict[str, Any] | None = None) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        msg["params"] = params
    return json.dumps(msg).encode()


def parse(resp: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC message of a response, whether the SDK framed it as JSON or as one SSE event."""
    text = resp.text
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        text = "\n".join(line[5:].strip() for line in text.splitlines() if line.startswith("data:"))
    return dict(json.loads(text))


def recorder_gateway(workdir: Path, server_extra: str) -> RunningGateway:
    port = free_port()
    config = default_config(
        port,
        workdir,
        stdio_upstream("rec", RECORDER, f'env = {{ RECORD_FILE = "{workdir / "rec.jsonl"}" }}\n'),
        policy=allow_all_policy(workdir),
    )
    config = config.replace(f'listen = "127.0.0.1:{port}"\n', f'listen = "127.0.0.1:{port}"\n{server_extra}')
    return start_gateway(workdir, config, port)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gw = recorder_gateway(tmp_path_factory.mktemp("badinput"), f"max_request_bytes = {LIMIT}\n")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def short_sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gw = recorder_gateway(tmp_path_factory.mktemp("shortsessions"), "session_idle_timeout_s = 2\n")
    yield gw
    gw.stop()


def open_session(gw: RunningGateway, agent: str = "ci-bot") -> str:
    init = rpc(
        1,
        "initialize",
        {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    )
    resp = httpx2.post(gw.url, content=init, headers=headers(agent))
    assert resp.status_code == 200, resp.text
    sid = resp.headers["mcp-session-id"]
    note = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()
    assert httpx2.post(gw.url, content=note, headers=headers(agent, sid)).status_code == 202
    return sid


def upstream_calls(gw: RunningGateway) -> list[dict[str, Any]]:
    path = gw.workdir / "rec.jsonl"
    lines = path.read_bytes().splitlines() if path.exists() else []
    return [m for m in map(orjson.loads, lines) if m.get("method") == "tools/call"]


def fds(gw: RunningGateway) -> int:
    return len(os.listdir(f"/proc/{gw.proc.pid}/fd"))


def still_serving(gw: RunningGateway, sid: str) -> None:
    resp = httpx2.post(
        gw.url,
        content=rpc(99, "tools/call", {"name": "rec__echo", "arguments": {"text": "alive"}}),
        headers=headers(sid=sid),
    )
    assert parse(resp).get("result", {}).get("content", [{}])[0].get("text") == "alive", resp.text


BAD_BODIES: dict[str, tuple[bytes, int]] = {
    # name: (body, the JSON-RPC error code expected)
    "malformed JSON": (b'{"jsonrpc": "2.0", "id": 2, "method": "tools/call"', -32700),
    "a JSON array of numbers": (b"[1, 2, 3]", -32602),
    "a bare string": (b'"tools/call"', -32602),
    "an empty batch": (b"[]", -32602),
    "no jsonrpc member": (
        json.dumps({"id": 3, "method": "tools/call", "params": {"name": "rec__echo"}}).encode(),
        -32602,
    ),
    "params is a list": (
        json.dumps({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": [1]}).encode(),
        -32602,
    ),
    "tool name is a number": (rpc(5, "tools/call", {"name": 5}), -32602),
    "arguments is a string": (rpc(6, "tools/call", {"name": "rec__echo", "arguments": "text"}), -32602),
    "unknown method": (rpc(7, "tools/explode", {"name": "rec__echo"}), -32601),
    "nesting 20000 deep": (
        b'{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"rec__echo",'
        b'"arguments":{"a":' + b"[" * 20000 + b"]" * 20000 + b"}}}",
        -32700,
    ),
    "invalid UTF-8": (
        b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"rec__echo","arguments":{"text":"\xff\xfe"}}}',
        -32700,
    ),
    "a lone surrogate escape": (
        b'{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"rec__echo","arguments":{"text":"\\ud800"}}}',
        -32700,
    ),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_body_gets_a_protocol_error_and_reaches_nothing(gateway: RunningGateway, name: str) -> None:
    sid = open_session(gateway)
    before = len(upstream_calls(gateway))
    body, code = BAD_BODIES[name]
    resp = httpx2.post(gateway.url, content=body, headers=headers(sid=sid))
    assert resp.status_code in (200, 400), resp.text
    error = parse(resp)["error"]
    assert error["code"] == code and error["message"], error
    still_serving(gateway, sid)
    assert len(upstream_calls(gateway)) == before + 1  # only the liveness call above reached the upstream


@pytest.mark.parametrize("rid", [None, 1.5, {"an": "object"}], ids=["null", "float", "object"])
def test_invalid_ids_are_never_executed(gateway: RunningGateway, rid: Any) -> None:
    """An id the protocol does not allow: refused, or treated as a notification; never forwarded as a call."""
    sid = open_session(gateway)
    before = len(upstream_calls(gateway))
    resp = httpx2.post(
        gateway.url, content=rpc(rid, "tools/call", {"name": "rec__echo", "arguments": {}}), headers=headers(sid=sid)
    )
    assert resp.status_code in (202, 400), resp.text
    if resp.status_code == 400:
        assert parse(resp)["error"]["code"] < 0
    still_serving(gateway, sid)
    assert len(upstream_calls(gateway)) == before + 1


@pytest.mark.parametrize("rid", [10**400, "i" * 50_000, -(2**63)], ids=["int 10^400", "string 50k", "min int64"])
def test_huge_ids_are_echoed_exactly(gateway: RunningGateway, rid: Any) -> None:
    sid = open_session(gateway)
    resp = httpx2.post(
        gateway.url,
        content=rpc(rid, "tools/call", {"name": "rec__echo", "arguments": {"text": "i"}}),
        headers=headers(sid=sid),
    )
    message = parse(resp)
    assert message["id"] == rid and message["result"]["content"][0]["text"] == "i"


def test_oversized_body_gets_413_naming_the_limit(gateway: RunningGateway) -> None:
    sid = open_session(gateway)
    before = len(upstream_calls(gateway))
    big = rpc(11, "tools/call", {"name": "rec__echo", "arguments": {"text": "x" * (LIMIT + 1)}})
    resp = httpx2.post(gateway.url, content=big, headers=headers(sid=sid))
    assert resp.status_code == 413
    assert str(LIMIT) in resp.json()["error"]["message"] and "max_request_bytes" in resp.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds for chunked bodies too
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    resp = httpx2.post(gateway.url, content=chunks(), headers=headers(sid=sid))
    assert resp.status_code == 413 and str(LIMIT) in resp.text
    still_serving(gateway, sid)
    assert len(upstream_calls(gateway)) == before + 1


def test_session_ids_unknown_expired_or_of_another_agent(gateway: RunningGateway) -> None:
    mine = open_session(gateway, "ci-bot")
    body = rpc(12, "tools/call", {"name": "rec__echo", "arguments": {"text": "x"}})
    before = len(upstream_calls(gateway))
    unknown = httpx2.post(gateway.url, content=body, headers=headers("ci-bot", "0" * 32))
    theirs = httpx2.post(gateway.url, content=body, headers=headers("admin", mine))
    assert unknown.status_code == theirs.status_code == 404
    assert unknown.content == theirs.content  # another agent's session looks exactly like no session at all
    assert unknown.json()["error"]["message"] == "Session not found"
    for method in ("GET", "DELETE"):  # no other verb lets another agent near it either
        assert httpx2.request(method, gateway.url, headers=headers("admin", mine)).status_code == 404
    still_serving(gateway, mine)  # the owner's session is untouched
    assert len(upstream_calls(gateway)) == before + 1


def test_expired_session_ids(short_sessions: RunningGateway) -> None:
    body = rpc(12, "tools/call", {"name": "rec__echo", "arguments": {"text": "x"}})
    expiring = open_session(short_sessions, "ci-bot")
    time.sleep(3.5)  # session_idle_timeout_s = 2
    before = len(upstream_calls(short_sessions))
    expired = httpx2.post(short_sessions.url, content=body, headers=headers("ci-bot", expiring))
    assert expired.status_code == 404 and expired.json()["error"]["message"] == "Session not found"
    assert len(upstream_calls(short_sessions)) == before


def test_a_call_longer_than_the_idle_timeout_keeps_its_session(short_sessions: RunningGateway) -> None:
    sid = open_session(short_sessions)
    resp = httpx2.post(
        short_sessions.url,
        content=rpc(14, "tools/call", {"name": "rec__sleep", "arguments": {"seconds": 3}}),
        headers=headers(sid=sid),
        timeout=30,
    )
    assert parse(resp)["result"]["content"][0]["text"] == "sleep"
    still_serving(short_sessions, sid)


def test_host_and_origin_are_checked(gateway: RunningGateway) -> None:
    init = rpc(
        1,
        "initialize",
        {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    )
    evil = httpx2.post(gateway.url, content=init, headers={**headers(), "Host": "evil.example.com"})
    assert evil.status_code == 421
    origin = httpx2.post(gateway.url, content=init, headers={**headers(), "Origin": "http://evil.example.com"})
    assert origin.status_code == 403
    good = httpx2.post(gateway.url, content=init, headers={**headers(), "Origin": f"http://127.0.0.1:{gateway.port}"})
    assert good.status_code == 200


def test_slow_and_abandoned_clients_do_not_stop_the_gateway(gateway: RunningGateway) -> None:
    sid = open_session(gateway)
    still_serving(gateway, sid)
    baseline = fds(gateway)
    body = rpc(13, "tools/call", {"name": "rec__sleep", "arguments": {"seconds": 2}})
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\nAuthorization: Bearer {KEYS['ci-bot'][2]}\r\n"
        f"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
        f"Mcp-Session-Id: {sid}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    slow, abandoned, mid_call = (socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(3))
    try:
        slow.sendall(head + body[:10])  # a client that trickles its body...
        abandoned.sendall(head + body[:10])  # ...and one that goes away half-way through it
        abandoned.close()
        mid_call.sendall(head + body)  # and one that leaves while its call runs at the upstream
        time.sleep(0.3)
        mid_call.close()
        for _ in range(5):
            still_serving(gateway, sid)  # others are served meanwhile
        slow.sendall(body[10:])
        slow.settimeout(10)
        assert b"200 OK" in slow.recv(65536)
    finally:
        slow.close()
    time.sleep(2.5)  # the abandoned call finishes at the upstream
    still_serving(gateway, sid)
    assert fds(gateway) <= baseline + 2, "file descriptors leaked"
