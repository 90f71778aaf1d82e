"""One test per private hook of gateway/sdk_adapter.py: an SDK, uvicorn or sse-starlette release that changes
one of them fails the test named after it (and pyproject.toml pins ``mcp`` to the minor series they passed on)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import uvicorn
from mcp.server import Server
from mcp.server.session import ServerSession
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings

from gateway import sdk_adapter


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


BARE_IMPORTS = """
import sys
import gateway.cli, gateway.service, gateway.fastpath, gateway.frontend, connectors.http
unused = [m for m in ("cryptography", "mcp.server.mcpserver", "mcp.client.client", "mcp.client._memory",
                      "mcp.client.auth.oauth2", "httpx2._client", "httpcore2") if m in sys.modules]
assert unused == [], unused
import httpx2
assert httpx2.AsyncClient.__name__ == "AsyncClient"  # a name of the bare package runs its __init__
assert "httpx2._client" in sys.modules
from mcp import ClientSession  # the package's names are still there, at the old cost, for whoever asks
from mcp.server import MCPServer, Server
from mcp.client import Client
import mcp.server.mcpserver
assert Server is sys.modules["mcp.server.lowlevel.server"].Server and MCPServer is mcp.server.mcpserver.MCPServer
assert ClientSession.__module__ == "mcp.client.session" and Client.__module__ == "mcp.client.client"
try:
    from mcp.server import NoSuchName
except ImportError:
    print("ok")
"""


def test_sdk_packages_import_without_their_init() -> None:
    """``bare_package``: the gateway's modules import the SDK's server, transport and client submodules without
    ``mcp``, ``mcp.client`` and ``mcp.server``'s ``__init__`` (which import ``MCPServer`` and ``cryptography``,
    ~10 MB resident the gateway never uses); a name asked of such a package later runs its ``__init__`` then. In a
    fresh interpreter: the test process has imported the SDK whole already."""
    out = subprocess.run(
        [sys.executable, "-c", BARE_IMPORTS], cwd=Path(__file__).parent.parent, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr
    for name in sdk_adapter.SDK_BARE_PACKAGES:  # the package, its __init__ not run, unless already imported
        assert sdk_adapter.bare_package(name) is sys.modules[name]


def test_quiet_server_leaves_signal_handlers_alone() -> None:
    assert hasattr(uvicorn.Server, "capture_signals")
    before = signal.getsignal(signal.SIGTERM)
    server = sdk_adapter.QuietServer(uvicorn.Config(lambda *a: None))
    with server.capture_signals():
        assert signal.getsignal(signal.SIGTERM) is before


def test_server_exiting_reads_uvicorn_s_signal_handler() -> None:
    server = uvicorn.Server(uvicorn.Config(lambda *a: None))
    with server.capture_signals():
        assert not sdk_adapter.server_exiting()
        server.should_exit = True
        assert sdk_adapter.server_exiting()
    server.should_exit = False


PARSERS = pytest.mark.parametrize("parser", ["httptools", "h11"])


@contextlib.asynccontextmanager
async def _guarded_server(
    max_connections: int, timeout: float, refused: list[str], parser: str = "h11", keep_alive: int = 5
) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """A uvicorn server on the guarded protocol, serving an app that answers ``ok`` and the body it read."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:  # the whole body is read, so a test sees what the parser handed over
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer = b"ok" + body
        headers = [(b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    protocol = sdk_adapter.guarded_protocol(parser, max_connections, timeout, refused.append)
    config = uvicorn.Config(app, lifespan="off", log_config=None, http=protocol, timeout_keep_alive=keep_alive)
    server = sdk_adapter.QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield server, sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task


@PARSERS
@pytest.mark.anyio
async def test_guarded_protocol_bounds_connections_and_request_heads(parser: str) -> None:
    """uvicorn's h11 protocol (connection_made, data_received, on_response_complete, conn.their_state) and its
    httptools protocol (the same, and on_message_begin, on_headers_complete, on_message_complete)."""
    refused: list[str] = []
    async with _guarded_server(2, 0.3, refused, parser) as (_server, port):
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        idle[0][1].write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # half a head
        extra = await asyncio.open_connection("127.0.0.1", port)
        assert (await asyncio.wait_for(extra[0].read(), 5)).startswith(b"HTTP/1.1 503")
        for reader, _ in idle:
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the head timeout
        assert refused.count("connections") == 1 and refused.count("header_timeout") == 2
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # control: a whole request is served
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"ok"), 5)).startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # kept alive, then its next head timed out
        writer.close()


@PARSERS
@pytest.mark.anyio
async def test_guarded_protocol_writes_a_head_and_its_body_at_once(
    monkeypatch: pytest.MonkeyPatch, parser: str
) -> None:
    """uvicorn's h11 and httptools protocols write through ``self.transport`` (set in connection_made), a head
    and its body in two writes: held, they go out as one; a streamed answer's head still goes out before its first
    chunk."""
    from asyncio.selector_events import _SelectorSocketTransport  # type: ignore[attr-defined]

    writes: list[bytes] = []
    real_write = _SelectorSocketTransport.write

    def spy(self: Any, data: bytes) -> None:
        if data and not bytes(data).startswith(b"GET "):  # the server's writes (the client's are requests)
            writes.append(bytes(data))
        real_write(self, data)

    monkeypatch.setattr(_SelectorSocketTransport, "write", spy)
    gate = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await gate.wait()  # nothing to say yet: the head must not wait for it
            await send({"type": "http.response.body", "body": b"late", "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    protocol = sdk_adapter.guarded_protocol(parser, 10, 5, lambda _: None)
    config = uvicorn.Config(app, lifespan="off", log_config=None, http=protocol)
    server = sdk_adapter.QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        for _ in range(2):  # kept alive: the second answer too
            writes.clear()
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(reader.readuntil(b"ok"), 5)).startswith(b"HTTP/1.1 200")
            assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200") and writes[0].endswith(b"\r\n\r\nok")
        writes.clear()
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
        gate.set()
        assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5) == b"4\r\nlate\r\n0\r\n\r\n"
        assert writes[0] == head
        writer.close()
    finally:
        gate.set()
        server.should_exit = True
        await task


async def _exchange(port: int, *pieces: bytes, pause: float = 0.0) -> tuple[bytes, int]:
    """Send the pieces (``pause`` apart) until the server has closed its end (a FIN: it answered and closed, and
    lingers on what is still sent); what it answered and how many pieces went."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.ensure_future(reader.read())  # done at the server's FIN
    sent = 0
    got = b""
    try:
        for piece in pieces:
            if answer.done():
                break
            writer.write(piece)
            await writer.drain()
            sent += 1
            await asyncio.sleep(pause)
        got = await asyncio.wait_for(answer, 5)
    except ConnectionError:
        pass  # a reset: the server closed with our bytes unread
    finally:
        answer.cancel()
        writer.close()
    return got, sent


@PARSERS
@pytest.mark.anyio
async def test_guarded_protocol_bounds_the_request_head_size(parser: str) -> None:
    """A head over MAX_HEAD_BYTES sent in pieces gets 400 and is closed before it ends (h11 bounds what it
    buffers; llhttp would buffer a header of any size). With httptools a head that came whole is bounded too,
    at MAX_WHOLE_HEAD_BYTES."""
    refused: list[str] = []
    async with _guarded_server(10, 5, refused, parser) as (_server, port):
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "
        pieces = [head, *[b"a" * 1024] * 64, b"\r\n\r\n"]
        got, sent = await _exchange(port, *pieces, pause=0.01)
        assert sent < len(pieces) and (got == b"" or got.startswith(b"HTTP/1.1 400")), got[:60]
        if parser == "httptools":
            whole = head + b"a" * (sdk_adapter.MAX_WHOLE_HEAD_BYTES + 1024) + b"\r\n\r\n"
            assert (await _exchange(port, whole))[0].startswith(b"HTTP/1.1 400")
        # controls: a head under the bound is served, sent in pieces, and a larger one (a big token) sent whole
        small = head + b"a" * (sdk_adapter.MAX_HEAD_BYTES - 2048) + b"\r\nConnection: close\r\n\r\n"
        large = head + b"a" * 60_000 + b"\r\nConnection: close\r\n\r\n"
        assert (await _exchange(port, large))[0].startswith(b"HTTP/1.1 200")
        split = [small[i : i + 1000] for i in range(0, len(small), 1000)]
        assert (await _exchange(port, *split, pause=0.005))[0].startswith(b"HTTP/1.1 200")


@PARSERS
@pytest.mark.anyio
async def test_guarded_protocol_never_serves_a_body_as_a_request(parser: str) -> None:
    """A request that asks to upgrade (h2c) with a body that is itself a request, sent after the head: llhttp
    skips such a body and would parse it as the next request. Refused with 400 (httptools) or read as the body
    (h11): either way one answer, never two. An upgrade request without a body is answered, then closed."""
    inner = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    head = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
    async with _guarded_server(10, 5, [], parser) as (_server, port):
        got, _ = await _exchange(port, head + b"Content-Length: %d\r\n\r\n" % len(inner), inner, pause=0.05)
        assert got.count(b"HTTP/1.1 ") == 1, got
        assert got.startswith(b"HTTP/1.1 400" if parser == "httptools" else b"HTTP/1.1 200"), got
        bodiless = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        got, _ = await _exchange(port, bodiless, inner, pause=0.05)
        assert got.startswith(b"HTTP/1.1 200") and (parser == "h11" or got.count(b"HTTP/1.1 ") == 1), got


def test_sse_starlette_drain_switches() -> None:
    from sse_starlette.sse import AppStatus

    assert callable(AppStatus.disable_automatic_graceful_drain)
    saved = AppStatus.enable_automatic_graceful_drain, AppStatus.should_exit
    try:
        sdk_adapter.keep_sse_streams_on_exit()
        assert AppStatus.enable_automatic_graceful_drain is False
        sdk_adapter.close_sse_streams()
        assert AppStatus.should_exit is True
    finally:
        AppStatus.enable_automatic_graceful_drain, AppStatus.should_exit = saved


def _manager() -> StreamableHTTPSessionManager:
    return StreamableHTTPSessionManager(
        app=Server("t"),
        security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        session_idle_timeout=60,
    )


async def _initialize(manager: StreamableHTTPSessionManager) -> str:
    body = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
    )
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/mcp",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"accept", b"application/json, text/event-stream")],
    }
    with anyio.fail_after(10):
        await manager.handle_request(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return dict(start["headers"])[b"mcp-session-id"].decode()


@pytest.mark.anyio
async def test_live_session_ids_and_transport_read_the_manager_s_sessions() -> None:
    manager = _manager()
    async with manager.run():
        assert list(sdk_adapter.live_session_ids(manager)) == []
        sid = await _initialize(manager)
        assert list(sdk_adapter.live_session_ids(manager)) == [sid]
        transport = sdk_adapter.live_transport(manager, sid)
        assert isinstance(transport, StreamableHTTPServerTransport)
        assert sdk_adapter.live_transport(manager, "no-such-session") is None
        await transport.terminate()
        assert sdk_adapter.live_transport(manager, sid) is None  # terminated: the SDK answers 404


@pytest.mark.anyio
async def test_holding_suspends_idle_expiry_as_the_sdk_does() -> None:
    # The counter and deadline are the ones the SDK's own handle_request uses.
    source = inspect.getsource(StreamableHTTPServerTransport.handle_request)
    assert "_requests_in_flight" in source and "idle_scope.deadline" in source
    transport = StreamableHTTPServerTransport("abc", idle_timeout=5)
    transport.idle_scope = anyio.CancelScope()
    with sdk_adapter.holding(transport):
        assert transport.idle_scope.deadline == math.inf and transport._requests_in_flight == 1
    assert transport._requests_in_flight == 0
    assert transport.idle_scope.deadline <= anyio.current_time() + 5
    with sdk_adapter.holding(None):  # a 2026-era call has no session to hold
        pass


def test_attach_session_manager() -> None:
    server: Server[Any] = Server("t")
    manager = _manager()
    sdk_adapter.attach_session_manager(server, manager)
    assert server.session_manager is manager


def test_connection_and_request_channel_of_a_server_session() -> None:
    assert list(inspect.signature(ServerSession.__init__).parameters)[1:3] == ["request_outbound", "connection"]
    from types import SimpleNamespace

    outbound, connection = object(), SimpleNamespace(protocol_version="2025-11-25")
    session = ServerSession(outbound, connection)  # type: ignore[arg-type]
    assert sdk_adapter.connection_of(session) is connection
    assert sdk_adapter.request_channel(session) is outbound


def test_drop_sdk_spans() -> None:
    server: Server[Any] = Server("t")
    assert any(type(m).__name__ == "OpenTelemetryMiddleware" for m in server.middleware)
    sdk_adapter.drop_sdk_spans(server)
    assert not any(type(m).__name__ == "OpenTelemetryMiddleware" for m in server.middleware)


@pytest.mark.anyio
async def test_scrub_transport_errors() -> None:
    """The SDK's transport reports a JSON-RPC validation failure as "Validation error: ..." with pydantic's text
    (tests/test_http_chain.py drives the real one); only answers of status 400 or more are read."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scrub = sdk_adapter.scrub_transport_errors(send)
    report = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": -32602,
                "message": "Validation error: 1 validation error for JSONRPCRequest ... errors.pydantic.dev",
            },
        }
    )
    await scrub({"type": "http.response.start", "status": 400, "headers": [(b"content-length", b"9")]})
    await scrub({"type": "http.response.body", "body": report[:10], "more_body": True})
    await scrub({"type": "http.response.body", "body": report[10:]})
    body = sent[1]["body"]
    assert b"pydantic" not in body and orjson.loads(body)["error"]["code"] == -32602
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(body)).encode()
    ok = {"type": "http.response.start", "status": 200, "headers": []}
    await scrub(ok)
    assert sent[-1] is ok


@PARSERS
@pytest.mark.anyio
async def test_a_refusal_is_read_even_while_the_client_still_sends(parser: str) -> None:
    """A head refused (400) while the client is still sending: the gateway closes its end but keeps reading and
    dropping for a moment, so the client reads the refusal. Closed with bytes unread, the kernel sends a reset
    that can throw the answer away before the client reads it."""
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (sdk_adapter.MAX_WHOLE_HEAD_BYTES + 1024)
    trailing = b"b" * (2 * 1024 * 1024)

    def one() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            try:
                s.sendall(head + trailing)
            except OSError:
                pass  # the server stopped reading: what it answered is still there to read
            out = b""
            try:
                while chunk := s.recv(65536):
                    out += chunk
            except ConnectionError as e:
                return b"reset after %r (%s)" % (out[:20], type(e).__name__.encode())
            return out

    async with _guarded_server(10, 5, [], parser) as (_server, port):
        for _ in range(8):
            got = await asyncio.to_thread(one)
            assert got.startswith(b"HTTP/1.1 400"), got[:80]


@PARSERS
@pytest.mark.anyio
async def test_a_reset_connection_is_released_at_once(parser: str) -> None:
    """uvicorn's keep-alive timer (``_unset_keepalive_if_required``) is cancelled when a kept-alive connection is
    reset, not only when it closes cleanly: the timer would hold the closed connection for ``timeout_keep_alive``."""
    import gc
    import struct
    import weakref

    async with _guarded_server(10, 30, [], parser, keep_alive=60) as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"ok"), 5)).startswith(b"HTTP/1.1 200")
        (protocol,) = server.server_state.connections
        assert protocol.timeout_keep_alive_task is not None  # kept alive, waiting for a next request
        gone = weakref.ref(protocol)
        del protocol
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        writer.close()
        deadline = time.monotonic() + 2  # the keep-alive timer would hold it for 60 s
        while gone() is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            gc.collect()
        assert gone() is None, "the reset connection is still held (by its keep-alive timer)"
        assert not server.server_state.connections


@PARSERS
@pytest.mark.anyio
async def test_a_closed_connection_is_freed_without_the_cycle_collector(parser: str) -> None:
    """``_OneWrite.lost``: a closed connection holds no reference cycle (its lingering close pointed back at the
    protocol), so reference counting frees it the moment it closes; with the cycle, every closed connection waited
    for the collector's next full pass."""
    import gc

    async with _guarded_server(10, 30, [], parser) as (server, port):
        cls = server.config.http
        gc.collect()
        gc.disable()
        try:
            for _ in range(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
                await asyncio.wait_for(reader.readuntil(b"okhi"), 5)
                writer.close()
                await writer.wait_closed()
            deadline = time.monotonic() + 2
            while server.server_state.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.05)
            assert sum(1 for o in gc.get_objects() if type(o) is cls) == 0
        finally:
            gc.enable()


@pytest.mark.anyio
async def test_serve_standalone_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's GET handler is replaced by the gateway's: an SSE event per message, a ping when idle, the slot freed
    when the client goes, ended by close_sse_streams at shutdown. What the SDK answers itself stays its own (406)."""
    from mcp.server import streamable_http as sdk
    from mcp_types import JSONRPCNotification

    sdk_adapter.serve_standalone_streams()
    assert getattr(StreamableHTTPServerTransport._handle_get_request, "gateway_stream", False)
    for name in ("check_accept_headers", "LAST_EVENT_ID_HEADER", "GET_STREAM_KEY", "REQUEST_STREAM_BUFFER_SIZE"):
        assert hasattr(sdk, name), name
    from sse_starlette.sse import AppStatus

    monkeypatch.setattr(sdk_adapter, "PING_S", 0.05)
    monkeypatch.setattr(AppStatus, "should_exit", False)  # close_sse_streams sets it
    manager = _manager()

    async def get(sid: str, accept: bytes, sent: list[dict[str, Any]], gone: anyio.Event) -> None:
        request = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict[str, Any]:
            if request:
                return request.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        headers = [(b"accept", accept), (b"mcp-session-id", sid.encode())]
        scope = {"type": "http", "method": "GET", "path": "/mcp", "query_string": b"", "headers": headers}
        with anyio.fail_after(10):
            await manager.handle_request(scope, receive, send)

    def body(sent: list[dict[str, Any]]) -> bytes:
        return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")

    async with manager.run():
        sid = await _initialize(manager)
        transport = sdk_adapter.live_transport(manager, sid)
        refused: list[dict[str, Any]] = []
        await get(sid, b"application/json", refused, anyio.Event())
        assert refused[0]["status"] == 406  # the SDK's own answer
        for _ in range(2):  # the second time: the slot the first client left is free again
            sent: list[dict[str, Any]] = []
            gone = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(get, sid, b"text/event-stream", sent, gone)
                with anyio.fail_after(5):
                    while sdk.GET_STREAM_KEY not in transport._request_streams:
                        await anyio.sleep(0.01)
                    note = JSONRPCNotification(jsonrpc="2.0", method="notifications/tools/list_changed")
                    await transport._request_streams[sdk.GET_STREAM_KEY][0].send(sdk.EventMessage(note, "e1"))
                    while b": ping" not in body(sent):
                        await anyio.sleep(0.01)
                gone.set()
            assert sent[0]["status"] == 200 and dict(sent[0]["headers"])[b"content-type"] == b"text/event-stream"
            assert b"event: message\r\nid: e1\r\ndata: " in body(sent)
            assert b'"method":"notifications/tools/list_changed"' in body(sent)
            assert sdk.GET_STREAM_KEY not in transport._request_streams
        sent = []
        async with anyio.create_task_group() as tg:  # shutdown: close_sse_streams ends the stream, whole
            tg.start_soon(get, sid, b"text/event-stream", sent, anyio.Event())
            with anyio.fail_after(5):
                while sdk.GET_STREAM_KEY not in transport._request_streams:
                    await anyio.sleep(0.01)
            sdk_adapter.close_sse_streams()
        assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
        assert sdk.GET_STREAM_KEY not in transport._request_streams


LISTED = [
    {"name": "plain", "inputSchema": {"type": "object"}},
    {
        "name": "full",
        "title": "Full",
        "description": "Every field, and some no version has",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        "outputSchema": {"type": "object"},
        "annotations": {"readOnlyHint": True, "title": None},
        "icons": [{"src": "https://example.com/i.png"}],
        "execution": {"taskSupport": "optional"},
        "_meta": {"k": 1},
        "notInAnyVersion": 1,
    },
    {"name": "nulls", "description": None, "inputSchema": {"type": "object"}},
]


@pytest.mark.parametrize("version", ["2025-03-26", "2025-11-25", "2026-07-28"])
def test_list_sieve_answers_as_the_sdk_s_sieve(version: str) -> None:
    from mcp_types.methods import SERVER_RESULTS, serialize_server_result

    for method in sdk_adapter.LIST_ITEMS:  # what makes a list's sieve its envelope's with its items': no validator
        decorators = SERVER_RESULTS[(method, version)].__pydantic_decorators__  # looks across the result's fields
        assert not decorators.model_validators and not decorators.field_validators, method
    sdk = getattr(serialize_server_result, "sieve", serialize_server_result)
    sieve = sdk_adapter.ListSieve(sdk)
    envelope = {"ttlMs": 0, "cacheScope": "private", "resultType": "complete"} if version == "2026-07-28" else {}
    data = {**envelope, "tools": LISTED, "nextCursor": "c"}
    want = sdk("tools/list", version, data)
    assert "notInAnyVersion" not in want["tools"][1] and "description" not in want["tools"][2]
    first = sieve("tools/list", version, data)
    assert first == want and len(sieve.kept) == 1
    again = sieve("tools/list", version, {**data, "nextCursor": "d"})  # the items from what was kept
    assert again == {**want, "nextCursor": "d"} and len(sieve.kept) == 1
    again["tools"][1]["inputSchema"]["type"] = "changed"  # an answer owns its objects: the kept items are untouched
    assert sieve("tools/list", version, data) == want
    changed = {**data, "tools": [{**LISTED[0], "description": "new"}]}
    assert sieve("tools/list", version, changed) == sdk("tools/list", version, changed)
    assert len(sieve.kept) == 2
    prompts = {**envelope, "prompts": [{"name": "p", "extra": 1}]}
    assert sieve("prompts/list", version, prompts) == sieve("prompts/list", version, prompts)
    assert sieve("prompts/list", version, prompts) == sdk("prompts/list", version, prompts)
    called = {**envelope, "content": [{"type": "text", "text": "x"}], "extra": 1}
    assert sieve("tools/call", version, called) == sdk("tools/call", version, called)  # not a list: the SDK's own


def test_list_sieve_fails_an_invalid_list_as_the_sdk_does_and_keeps_nothing_of_it() -> None:
    import pydantic
    from mcp_types.methods import serialize_server_result

    sieve = sdk_adapter.ListSieve(getattr(serialize_server_result, "sieve", serialize_server_result), budget=4096)
    bad = {"tools": [LISTED[0], {"name": "no schema"}]}
    with pytest.raises(pydantic.ValidationError):
        sieve.sieve("tools/list", "2025-11-25", bad)
    with pytest.raises(pydantic.ValidationError):
        sieve("tools/list", "2025-11-25", bad)
    assert not sieve.kept
    good = {"tools": [LISTED[0]]}
    sieve("tools/list", "2025-11-25", good)
    with pytest.raises(pydantic.ValidationError):  # the envelope is checked on every answer, kept items or not
        sieve("tools/list", "2025-11-25", {**good, "nextCursor": 5})
    with pytest.raises(pydantic.ValidationError):
        sieve("tools/list", "2026-07-28", good)
    for n in range(1, 60):  # bounded: dropped all at once when full
        many = {"tools": [{"name": f"t{i}", "inputSchema": {"type": "object"}} for i in range(n)]}
        assert sieve("tools/list", "2025-11-25", many) == sieve.sieve("tools/list", "2025-11-25", many)
        assert sieve.size <= 4096 and sieve.size == sum(len(k[2]) + len(v) for k, v in sieve.kept.items())
    assert 0 < len(sieve.kept) < 59
    huge = {"tools": [{"name": "t" * 5000, "inputSchema": {"type": "object"}}]}
    assert sieve("tools/list", "2025-11-25", huge) == sieve.sieve("tools/list", "2025-11-25", huge)
    assert all(len(key[2]) < 4096 for key in sieve.kept)  # larger than the whole budget: never kept


@pytest.mark.anyio
async def test_sieve_list_items_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcp import Client
    from mcp_types import methods

    sdk = getattr(methods.serialize_server_result, "sieve", methods.serialize_server_result)
    monkeypatch.setattr(methods, "serialize_server_result", sdk)
    sdk_adapter.sieve_list_items_once()
    sdk_adapter.sieve_list_items_once()
    sieve = methods.serialize_server_result
    assert isinstance(sieve, sdk_adapter.ListSieve) and not isinstance(sieve.sieve, sdk_adapter.ListSieve)

    async def list_tools(ctx: Any, params: Any) -> dict[str, Any]:
        return {"tools": LISTED, "ttlMs": 0, "cacheScope": "private", "resultType": "complete"}  # 2025: dropped

    for mode in ("legacy", "2026-07-28"):  # the server's runner calls it, in both eras
        async with Client(Server("t", on_list_tools=list_tools), mode=mode) as client:  # type: ignore[arg-type]
            tools = (await client.list_tools()).tools
        assert [t.name for t in tools] == ["plain", "full", "nulls"]
    assert {key[1] for key in sieve.kept} == {"2025-11-25", "2026-07-28"} and len(sieve.kept) == 2
