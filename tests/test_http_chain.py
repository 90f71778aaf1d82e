"""The agent port's request chain under attack, over raw HTTP against the real gateway process.

Duplicated identity/routing headers (issue 9, finding 2), per-agent caps and connection bounds (finding 6).
Each attempt has its positive control, so a broken set-up cannot pass as "refused".
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx2
import pytest

from tests.conftest import KEYS, RunningGateway
from tests.test_protocol_bad_input import headers, open_session, parse, recorder_gateway, rpc, still_serving

A, B = "ci-bot", "researcher"


@pytest.fixture(scope="module", params=["httptools", "h11"])
def gw(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[RunningGateway]:
    """One gateway per HTTP parser of the agent listener: every attempt holds with either."""
    g = recorder_gateway(
        tmp_path_factory.mktemp("chain"),
        "max_sessions_per_agent = 3\nmax_concurrent_calls_per_agent = 2\nmax_connections = 25\nheader_timeout_s = 1\n"
        f"http = {request.param!r}\n",
    )
    yield g
    g.stop()


def limited(gw: RunningGateway, limit: str) -> float:
    for line in httpx2.get(gw.admin_base + "/metrics").text.splitlines():
        if line.startswith(f'mcp_gateway_limited_total{{limit="{limit}"}}'):
            return float(line.split()[-1])
    return 0.0


def with_sids(agent: str, *sids: str) -> list[tuple[str, str]]:
    return [*headers(agent).items(), *(("Mcp-Session-Id", s) for s in sids)]


def test_a_duplicated_session_id_is_refused_and_the_owner_keeps_the_session(gw: RunningGateway) -> None:
    """B sends A's session id then its own (and the other way round) on DELETE, GET and POST: 400 each time,
    before anything reads it; A's session still works. Control: the single header is served (own) or 404 (A's)."""
    sid_a, sid_b = open_session(gw, A), open_session(gw, B)
    listing = rpc(5, "tools/list")
    try:
        for order in ((sid_a, sid_b), (sid_b, sid_a)):
            h = with_sids(B, *order)
            assert httpx2.delete(gw.url, headers=h).status_code == 400
            with httpx2.stream("GET", gw.url, headers=h, timeout=5) as resp:
                assert resp.status_code == 400
            post = httpx2.post(gw.url, content=listing, headers=h)
            assert post.status_code == 400 and "mcp-session-id" in post.json()["error"]["message"]
        still_serving(gw, sid_a)
        # positive controls: one header is read as sent
        assert parse(httpx2.post(gw.url, content=listing, headers=with_sids(B, sid_b)))["result"]["tools"]
        assert httpx2.post(gw.url, content=listing, headers=with_sids(B, sid_a)).status_code == 404
        assert httpx2.delete(gw.url, headers=with_sids(B, sid_a)).status_code == 404
        still_serving(gw, sid_a)
    finally:
        assert httpx2.delete(gw.url, headers=with_sids(B, sid_b)).status_code == 200
        assert httpx2.delete(gw.url, headers=with_sids(A, sid_a)).status_code == 200


def raw_post(gw: RunningGateway, head: list[tuple[str, str]], body: bytes) -> bytes:
    """Send exactly these header lines (no client library merges or refuses them); the whole answer."""
    lines = "".join(f"{k}: {v}\r\n" for k, v in head)
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(
            f"POST /mcp HTTP/1.1\r\n{lines}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )
        return _recv_all(sock, 10)


@pytest.mark.parametrize(
    "name, value",
    [
        ("Authorization", f"Bearer {KEYS[A][2]}"),
        ("Mcp-Protocol-Version", "2025-11-25"),
        ("Host", "evil.example"),
        ("Origin", "http://127.0.0.1"),
        ("Content-Type", "text/plain"),
        ("Mcp-Name", "rec__echo"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Param-Text", "x"),
        ("Cookie", "a=b"),
    ],
)
def test_any_duplicated_identity_or_routing_header_is_refused(gw: RunningGateway, name: str, value: str) -> None:
    sid = open_session(gw, B)
    try:
        call = rpc(7, "tools/call", {"name": "rec__echo", "arguments": {"text": "hi"}})
        single = [("Host", f"127.0.0.1:{gw.port}"), *with_sids(B, sid)]
        if name.lower() not in {k.lower() for k, _ in single}:
            single.append((name, value))
        double = [*single, (name, value)]
        assert raw_post(gw, double, call).startswith(b"HTTP/1.1 400 ")
        if name not in ("Host", "Origin", "Content-Type", "Authorization", "Mcp-Protocol-Version"):
            answer = raw_post(gw, single, call)  # control: the same request with one value is served
            assert answer.startswith(b"HTTP/1.1 200 ") and b'"hi"' in answer, answer
    finally:
        httpx2.delete(gw.url, headers=with_sids(B, sid))


def test_one_agent_at_its_session_cap_leaves_other_agents_served(gw: RunningGateway) -> None:
    before = limited(gw, "sessions_per_agent")
    mine = [open_session(gw, B) for _ in range(3)]
    init = rpc(
        1,
        "initialize",
        {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    )
    refused = httpx2.post(gw.url, content=init, headers=headers(B))
    assert refused.status_code == 429 and "max_sessions_per_agent" in refused.json()["error"]["message"]
    escaped = init.replace(b'"initialize"', b'"\\u0069nitialize"')  # a spelling the SDK reads the same
    assert httpx2.post(gw.url, content=escaped, headers=headers(B)).status_code == 429
    other = open_session(gw, A)  # another agent is served
    still_serving(gw, other)
    assert limited(gw, "sessions_per_agent") == before + 2
    assert httpx2.delete(gw.url, headers=with_sids(B, mine.pop())).status_code == 200
    mine.append(open_session(gw, B))  # a freed slot is usable again
    for sid in mine:
        httpx2.delete(gw.url, headers=with_sids(B, sid))
    httpx2.delete(gw.url, headers=with_sids(A, other))


def _half_sent_post(gw: RunningGateway, agent: str, sid: str) -> socket.socket:
    """A POST whose head is sent and whose body never finishes: in flight for as long as the client likes."""
    body = rpc(9, "tools/call", {"name": "rec__echo", "arguments": {"text": "slow"}})
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nAuthorization: Bearer {KEYS[agent][2]}\r\n"
        f"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
        f"Mcp-Session-Id: {sid}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall(head + body[:5])
    return sock


def test_one_agent_at_its_call_cap_leaves_other_agents_served(gw: RunningGateway) -> None:
    before = limited(gw, "calls_per_agent")
    sid_b, sid_a = open_session(gw, B), open_session(gw, A)
    held = [_half_sent_post(gw, B, sid_b) for _ in range(2)]
    try:
        call = rpc(3, "tools/call", {"name": "rec__echo", "arguments": {"text": "x"}})
        deadline = time.monotonic() + 10
        while (resp := httpx2.post(gw.url, content=call, headers=with_sids(B, sid_b))).status_code != 429:
            assert time.monotonic() < deadline, "the held calls never filled the cap"
            time.sleep(0.1)
        assert "max_concurrent_calls_per_agent" in resp.json()["error"]["message"]
        still_serving(gw, sid_a)  # another agent is served meanwhile
        assert limited(gw, "calls_per_agent") >= before + 1
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while (resp := httpx2.post(gw.url, content=rpc(4, "tools/list"), headers=with_sids(B, sid_b))).status_code != 200:
        assert time.monotonic() < deadline, "the cap was not released when the held calls ended"
        time.sleep(0.1)
    for agent, sid in ((B, sid_b), (A, sid_a)):
        httpx2.delete(gw.url, headers=with_sids(agent, sid))


def _recv_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(4096):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def test_half_sent_request_heads_are_bounded_and_closed(gw: RunningGateway) -> None:
    """Slowloris: 40 connections that never finish their request head against max_connections = 25 and a
    1 s header timeout. Past the cap a connection gets 503 at once; the others are closed by the timeout; the
    admin listener answers throughout, and a normal client is served once they are gone."""
    before_conn, before_head = limited(gw, "connections"), limited(gw, "header_timeout")
    socks = []
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nX-Slow: ".encode())
        socks.append(s)
    try:
        results: list[bytes] = [b""] * len(socks)

        def drain(i: int) -> None:
            results[i] = _recv_all(socks[i], 15)

        threads = [threading.Thread(target=drain, args=(i,)) for i in range(len(socks))]
        for t in threads:
            t.start()
        assert httpx2.get(gw.admin_base + "/metrics").status_code == 200  # the admin port is not starved
        for t in threads:
            t.join(30)
        refused = [r for r in results if r.startswith(b"HTTP/1.1 503")]
        timed_out = [r for r in results if r == b""]
        assert len(refused) >= 15 and len(refused) + len(timed_out) == 40, results
    finally:
        for s in socks:
            s.close()
    sid = open_session(gw, A)
    still_serving(gw, sid)
    httpx2.delete(gw.url, headers=with_sids(A, sid))
    assert limited(gw, "connections") - before_conn >= 15
    assert limited(gw, "header_timeout") - before_head >= 1


def test_a_complete_request_is_not_cut_by_the_header_timeout(gw: RunningGateway) -> None:
    """Control: the header timeout bounds the head only; a call longer than it is answered."""
    sid = open_session(gw, A)
    resp = httpx2.post(
        gw.url,
        content=rpc(11, "tools/call", {"name": "rec__sleep", "arguments": {"seconds": 2}}),
        headers=with_sids(A, sid),
        timeout=20,
    )
    assert "error" not in parse(resp), resp.text
    httpx2.delete(gw.url, headers=with_sids(A, sid))


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc": "1.0", "id": 1, "method": "tools/list"}',
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ["rec__echo"]}',
        b'{"jsonrpc": "2.0", "id": 1, "method": ["tools/call"]}',
        b'[{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}]',
    ],
)
def test_invalid_json_rpc_gets_a_plain_error_without_internal_text(gw: RunningGateway, body: bytes) -> None:
    """The SDK's transport answers these with pydantic's report (model names, input values, links): scrubbed."""
    sid = open_session(gw, A)
    try:
        resp = httpx2.post(gw.url, content=body, headers=with_sids(A, sid))
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["message"].startswith("Invalid JSON-RPC message") and "pydantic" not in resp.text, resp.text
        still_serving(gw, sid)
    finally:
        httpx2.delete(gw.url, headers=with_sids(A, sid))


def test_a_body_framed_two_ways_is_refused(gw: RunningGateway) -> None:
    """Content-Length and Transfer-Encoding together: a proxy in front may frame another body (request smuggling)."""
    sid = open_session(gw, A)
    try:
        call = rpc(12, "tools/call", {"name": "rec__echo", "arguments": {"text": "framed"}})
        chunked = f"{len(call):x}\r\n".encode() + call + b"\r\n0\r\n\r\n"
        base = [("Host", f"127.0.0.1:{gw.port}"), *with_sids(A, sid)]
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            head = "".join(f"{k}: {v}\r\n" for k, v in base)
            sock.sendall(
                f"POST /mcp HTTP/1.1\r\n{head}Transfer-Encoding: chunked\r\nContent-Length: {len(chunked)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + chunked
            )
            answer = _recv_all(sock, 10)
        # refused by the gateway (naming the header) or, with httptools, already by the parser (llhttp)
        named = b"Transfer-Encoding" in answer or b"Invalid HTTP request" in answer
        assert answer.startswith(b"HTTP/1.1 400 ") and named, answer
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:  # control: chunked alone is served
            head = "".join(f"{k}: {v}\r\n" for k, v in base)
            sock.sendall(
                f"POST /mcp HTTP/1.1\r\n{head}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
                + chunked
            )
            answer = _recv_all(sock, 10)
        assert answer.startswith(b"HTTP/1.1 200 ") and b"framed" in answer, answer
    finally:
        httpx2.delete(gw.url, headers=with_sids(A, sid))
