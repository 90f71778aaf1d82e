"""Every reach into the private internals of the MCP SDK, httpx2, pydantic, uvicorn and sse-starlette, in one place.

The gateway relies on a few behaviours these libraries do not promise. Each one is a small function here with
a test of its own in ``tests/test_sdk_adapter.py``: a release that changes one fails a test named after it,
instead of silently breaking the hot path. ``pyproject.toml`` pins ``mcp``, httpx2 and pydantic to the minor series
they passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.machinery
import importlib.util
import logging
import math
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import Any

import orjson

# --- MCP SDK: its packages, imported without their __init__ ----------------------------------------------------

SDK_BARE_PACKAGES = ("mcp", "mcp.client", "mcp.client.auth", "mcp.server")
"""Packages of the SDK whose ``__init__`` imports what the gateway never uses: ``mcp`` and ``mcp.client`` import
the SDK's ``Client`` and in-memory transport, which import ``MCPServer`` (its resources, prompts and utilities,
and ``cryptography`` through ``mcp.server.auth``), and ``mcp.server`` imports ``MCPServer`` itself: ~15 MB of a
process that only needs ``mcp.server.lowlevel``, the streamable-HTTP transport, ``mcp.shared`` and
``mcp.client.auth.exceptions``. The gateway imports those submodules by their full names."""


def bare_package(name: str) -> ModuleType:
    """Register the package ``name`` in ``sys.modules`` without running its ``__init__``.

    Its submodules import as usual (the package's ``__path__`` is set). Whoever asks the package for a name it does
    not have gets it as before: a submodule is imported, anything else runs the real ``__init__`` first (so
    ``from mcp import ClientSession`` elsewhere in the process keeps working, at the old cost). A package already
    imported is returned as it is. Call before anything imports the SDK (``gateway/__init__.py`` does).
    """
    if name in sys.modules:
        return sys.modules[name]
    parent, _, child = name.rpartition(".")
    search = bare_package(parent).__path__ if parent else None
    spec = importlib.machinery.PathFinder.find_spec(name, search)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not a package on the path")
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(attr: str) -> Any:
        if not attr.startswith("__") and importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")
        if module.__dict__.pop("__getattr__", None) is None:  # the __init__ already ran, or is running
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        loader.exec_module(module)
        return getattr(module, attr)

    module.__dict__["__getattr__"] = __getattr__
    sys.modules[name] = module
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


for _package in SDK_BARE_PACKAGES:
    bare_package(_package)

HTTPX2_BARE = "httpx2"
"""httpx2 too: the gateway's modules import it at the top for what only some configurations use (OAuth upstreams,
bundles, decision-log shipping, the fleet's hops), and the connectors use its SSE parser (``httpx2._sse``, which
needs a few of its modules). Its ``__init__`` imports its client and transports, and httpcore2 under them: ~3 MB
a gateway without those features never uses. The first use of a name of the package (``httpx2.AsyncClient``) runs
the real ``__init__``."""
bare_package(HTTPX2_BARE)


# --- pydantic: models built when first used ----------------------------------------------------------------------


def defer_model_builds() -> None:
    """Build a pydantic model's validator and serializer when the model is first used, not when its class is
    defined.

    The SDK defines several hundred models (both protocol eras in ``mcp_types``, the OAuth server's) and the
    gateway validates with a few dozen of them: built at import, the rest cost the process ~3 MB for as long as it
    lives. Pydantic has the switch per model (``ConfigDict(defer_build=True)``) and no public one for the
    process: this sets its default, before the SDK's models are defined. A model whose class sets the option
    itself keeps its own."""
    from pydantic._internal import _config

    _config.config_defaults["defer_build"] = True


defer_model_builds()

import anyio  # noqa: E402
import uvicorn  # noqa: E402

from gateway.http.disconnect import hung_up, watch_disconnect  # noqa: E402

log = logging.getLogger("gateway.http")


# --- uvicorn ---------------------------------------------------------------------------------------------------


class QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the process' signal handlers alone.

    The admin listener runs beside the agent listener in one event loop; only the agent listener's server takes
    SIGTERM/SIGINT (uvicorn's ``capture_signals``), and the admin one is told to stop when the agent one stops.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


MAX_HEAD_BYTES = 16 * 1024
"""h11's default bound on a request head not yet whole (uvicorn keeps it): past it the connection gets 400 and is
closed. The httptools protocol keeps the same bound."""
LINGER_S = 2.0
"""After the gateway closes a connection, how long it still reads and drops what the client sends (see
``_Guards._linger``)."""
MAX_WHOLE_HEAD_BYTES = 64 * 1024
"""A request head that came whole, at most, with httptools (h11 takes whatever one read holds): room for a large
token, which is refused with 401 and recorded rather than cut at the parser."""


def guarded_protocol(
    http: str, max_connections: int, header_timeout: float, on_refused: Callable[[str], None]
) -> type[asyncio.Protocol]:
    """The agent listener's protocol for ``[server] http`` ("httptools" or "h11"), with the same guards."""
    if http == "httptools":
        return guarded_httptools(max_connections, header_timeout, on_refused)
    return guarded_h11(max_connections, header_timeout, on_refused)


_ProtocolBase: Any = object


class _Guards(_ProtocolBase):
    """The bounds both listener protocols share, in front of uvicorn's protocol in the class's bases: the
    connection cap, the head timeout (armed at the start and after each response while a head is awaited) and
    one write per answer. A subclass says when a head is awaited (``_head_pending``) and sets the three bounds."""

    _max_connections: int
    _header_timeout: float
    _on_refused: Callable[[str], None]
    _head_timer: asyncio.TimerHandle | None = None

    def _head_pending(self) -> bool:
        raise NotImplementedError

    _lingering = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_OneWrite(transport, self.loop, self._linger))
        if len(self.connections) > self._max_connections:
            self._on_refused("connections")
            transport.write(_TOO_MANY)  # type: ignore[attr-defined]
            transport.close()  # at once, not lingering: past the limit every descriptor counts (slowloris)
            return
        self._arm()

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_pending() and not self.transport.is_closing():
            self._on_refused("header_timeout")
            self.transport.abort()  # a slow head is not lingered on: it would only hold the connection longer

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._head_pending():
            self._arm()  # a kept-alive connection has as long for its next request head

    def _linger(self, transport: asyncio.WriteTransport) -> None:
        """uvicorn closes the connection: send everything and a FIN now, then read and drop what the client still
        sends (the rest of a body refused early: 401, 413) until it closes its end (uvicorn's ``eof_received``
        lets asyncio close the transport), for at most ``LINGER_S``.
        Closed at once with data unread, the kernel answers a reset, and a client still sending its body never
        reads the refusal (RFC 9112, 9.6)."""
        if self._lingering or transport.is_closing():
            return
        try:
            half_close = transport.can_write_eof()
        except (AttributeError, NotImplementedError):
            half_close = False
        if not half_close:
            transport.close()
            return
        self._lingering = True
        self._disarm()
        transport.write_eof()
        self.loop.call_later(LINGER_S, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        # uvicorn cancels its keep-alive timer only when the connection closed cleanly: after a reset the timer
        # (``timeout_keep_alive``) would hold the closed connection, its last request and buffers, a few KB, alive
        # until it fired. Clients reset connections routinely (an HTTP client dropping one it did not read out).
        self._unset_keepalive_if_required()
        self.transport.lost()


def guarded_h11(
    max_connections: int, header_timeout: float, on_refused: Callable[[str], None]
) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with two bounds it lacks: open connections (one past ``max_connections`` gets
    503 and is closed at once) and the time to send a request head (a connection that has not sent a whole
    request line and headers ``header_timeout`` seconds after it opened, or after its last response, is closed).

    Together they bound what a slowloris client can hold: file descriptors, and for how long.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(_Guards, H11Protocol):
        _max_connections, _header_timeout, _on_refused = max_connections, header_timeout, staticmethod(on_refused)

        def _head_pending(self) -> bool:
            return self.conn.their_state is h11.IDLE

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                return  # the connection is closing: what the client still sends is dropped
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # the request head is in: the body and the answer have their own bounds

    return GuardedH11Protocol


class _Refused(Exception):
    """Raised in a parser callback: httptools turns it into a parser error, which uvicorn answers with 400."""


_FRAMING = (b"content-length", b"transfer-encoding")


def guarded_httptools(
    max_connections: int, header_timeout: float, on_refused: Callable[[str], None]
) -> type[asyncio.Protocol]:
    """uvicorn's httptools (llhttp) protocol with the bounds of ``guarded_h11``, and the one h11 has built in
    that llhttp lacks: a request head still incomplete past ``MAX_HEAD_BYTES`` is refused (llhttp would buffer
    a header of any size), and one that came whole past ``MAX_WHOLE_HEAD_BYTES``.
    A request asking to upgrade (the gateway upgrades to nothing) is refused when it has a body, and otherwise
    answered on a connection closed after it.

    The head's size is known two ways: the chunks received wholly while a head is awaited (no message began or
    ended in them: a head sent slowly, or a header without end), and the whole head once parsed (a head that
    came in one chunk). A head is awaited from the connection's start and from each message's end to its next
    head's end; the timer runs, as with h11, from the start and from each response's end.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(_Guards, HttpToolsProtocol):
        _max_connections, _header_timeout, _on_refused = max_connections, header_timeout, staticmethod(on_refused)
        _awaiting_head = True
        _head_bytes = 0
        _boundary = False

        def _head_pending(self) -> bool:
            return self._awaiting_head

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                return  # the connection is closing: what the client still sends is dropped
            if not self._awaiting_head:
                super().data_received(data)
                return
            self._boundary = False
            super().data_received(data)
            if self._awaiting_head and not self._boundary:  # the whole chunk was head bytes
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                    self.send_400_response("Invalid HTTP request received.")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._boundary = True
            self._head_bytes = 0

        def on_headers_complete(self) -> None:
            size = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
            if size > MAX_WHOLE_HEAD_BYTES:
                raise _Refused("head too large")
            self._awaiting_head = False
            self._boundary = True
            self._disarm()  # the request head is in: the body and the answer have their own bounds
            upgrade = self.parser.should_upgrade() and not self._should_upgrade()
            if upgrade and any(name in _FRAMING for name, value in self.headers if value.strip() != b"0"):
                # llhttp skips the body of a request that asks to upgrade (h2c...) and would parse what follows
                # as the next request: a body a proxy in front forwarded would become a request of its own.
                raise _Refused("upgrade with a body")
            super().on_headers_complete()
            if upgrade:
                self.cycle.keep_alive = False  # nothing after this head is ever served on this connection

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._awaiting_head = True
            self._boundary = True
            self._head_bytes = 0

    return GuardedHttpToolsProtocol


class _OneWrite:
    """The connection's transport as uvicorn's h11 and httptools protocols see it: a response head is held until
    the body's first write in the same event-loop turn, and goes out with it in one ``write``.

    uvicorn writes a head and its body separately; with TCP_NODELAY each is a packet and a wake-up of the client,
    which on a loaded machine may run before the body is written. A head with no body written in the same turn
    (a stream that has nothing to say yet) goes out on the loop's next turn, so streamed answers still stream;
    an informational (1xx) head goes out at once. Everything else is the transport's own.
    """

    __slots__ = ("_closed", "_held", "_linger", "_loop", "_transport")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop, linger: Callable[[Any], None]):
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._linger = linger
        self._closed = False

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data[:9] == b"HTTP/1.1 " and data[9:10] != b"1":
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._linger(self._transport)  # a lingering close (_Guards._linger)

    def is_closing(self) -> bool:
        return self._closed or bool(self._transport.is_closing())

    def lost(self) -> None:
        """The connection is gone: drop the lingering close, the one reference back to the protocol. Left in place,
        that reference cycle kept each closed connection (some 20 objects: protocol, request, parser, buffers)
        until the cycle collector's next full pass, which a busy gateway makes rarely; cut, it is freed at once."""
        self._closed = True
        self._linger = _closed_already

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _closed_already(transport: Any) -> None:
    return None


_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: 45\r\n\r\ntoo many connections (server.max_connections)"
)


def server_exiting() -> bool:
    """Has uvicorn been told to stop? (Its SIGTERM handler is a bound method of the server: sse-starlette's way.)"""
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


# --- sse-starlette ---------------------------------------------------------------------------------------------


def keep_sse_streams_on_exit() -> None:
    """Stop sse-starlette from ending every SSE stream the moment the server is told to stop (it would cut
    calls that answer on a stream); ``close_sse_streams`` ends them once the calls in flight are done."""
    from sse_starlette.sse import AppStatus

    AppStatus.disable_automatic_graceful_drain()


def close_sse_streams() -> None:
    from sse_starlette.sse import AppStatus

    AppStatus.should_exit = True
    for scope in list(_standalone_streams):
        scope.cancel()


# --- MCP SDK: the standalone GET stream ------------------------------------------------------------------------

PING_S = 15.0
"""A comment line on an idle standalone stream this often, as sse-starlette sends: proxies keep it open."""
_SSE_HEAD = [
    (b"cache-control", b"no-cache, no-transform"),
    (b"content-type", b"text/event-stream"),
    (b"x-accel-buffering", b"no"),
]
_PING = b": ping\r\n\r\n"
_standalone_streams: set[anyio.CancelScope] = set()
"""The standalone streams being served: ``close_sse_streams`` ends them at shutdown, as sse-starlette's own."""


def serve_standalone_streams() -> None:
    """Serve a session's standalone GET stream (server-to-client notifications and requests) with the request's
    own task and a plain one that waits for the client to go, in place of the SDK's sse-starlette response (five tasks,
    two memory streams and a writer task). Every session of the 2025 era holds one for its whole life: ~36 KB
    each the SDK's way, ~7 MB at 200 sessions. What the SDK answers otherwise (406, 409, a replay from
    Last-Event-ID, a bad session header) is still its own: those requests go to its handler unchanged."""
    from mcp.server import streamable_http as sdk

    cls = sdk.StreamableHTTPServerTransport
    if getattr(cls._handle_get_request, "gateway_stream", False):
        return
    sdk_get = cls._handle_get_request

    async def handle_get(self: Any, request: Any, send: Any) -> None:
        if (
            not sdk.check_accept_headers(request)[1]
            or request.headers.get(sdk.LAST_EVENT_ID_HEADER)
            or sdk.GET_STREAM_KEY in self._request_streams
            or self._read_stream_writer is None
        ):
            await sdk_get(self, request, send)
            return
        if not await self._validate_request_headers(request, send):
            return
        await _standalone_stream(self, sdk, request.receive, send)

    handle_get.gateway_stream = True  # type: ignore[attr-defined]
    cls._handle_get_request = handle_get  # type: ignore[method-assign]


async def _standalone_stream(transport: Any, sdk: Any, receive: Any, send: Any) -> None:
    streams = anyio.create_memory_object_stream[Any](sdk.REQUEST_STREAM_BUFFER_SIZE)
    transport._request_streams[sdk.GET_STREAM_KEY] = streams
    head = list(_SSE_HEAD)
    if transport.mcp_session_id:
        head.append((b"mcp-session-id", transport.mcp_session_id.encode()))
    gone = False
    try:
        await send({"type": "http.response.start", "status": 200, "headers": head})
        with anyio.CancelScope() as scope:
            watcher = watch_disconnect(receive, scope)  # cancelled before the scope is left
            _standalone_streams.add(scope)
            try:
                await _pump(transport, streams[1], send)
            finally:
                _standalone_streams.discard(scope)
                gone = hung_up(watcher)
                watcher.cancel()
    finally:
        if transport._request_streams.get(sdk.GET_STREAM_KEY) is streams:
            await transport._clean_up_memory_streams(sdk.GET_STREAM_KEY)
        else:
            streams[0].close()
            streams[1].close()
    if not gone:
        with anyio.CancelScope(shield=True), contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _pump(transport: Any, reader: Any, send: Any) -> None:
    """Each message the session sends on its standalone stream, as an SSE event; a ping when idle. Ends when the
    session closes the stream (terminated, DELETE)."""
    while True:
        message = None
        with anyio.move_on_after(PING_S):
            try:
                message = await reader.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return
        if message is None:
            await send({"type": "http.response.body", "body": _PING, "more_body": True})
            continue
        event = transport._create_event_data(message)
        frame = [b"event: ", event["event"].encode(), b"\r\n"]
        if "id" in event:
            frame += [b"id: ", str(event["id"]).encode(), b"\r\n"]
        for line in event["data"].splitlines() or [""]:
            frame += [b"data: ", line.encode(), b"\r\n"]
        frame.append(b"\r\n")
        await send({"type": "http.response.body", "body": b"".join(frame), "more_body": True})


# --- MCP SDK: the session manager and its transports -----------------------------------------------------------


def live_session_ids(manager: Any) -> Iterable[str]:
    """The ids of the sessions a ``StreamableHTTPSessionManager`` holds (its private map; the SDK owns their
    lifetime: idle expiry, DELETE). Session bindings and the sessions gauge follow it."""
    instances: dict[str, Any] = manager._server_instances
    return instances.keys()


def holds_session(managers: Iterable[Any], session_id: str) -> bool:
    """Whether any of these session managers holds the session and has not terminated it."""
    return any(live_transport(m, session_id) is not None for m in managers)


def live_transport(manager: Any, session_id: str) -> Any:
    """The transport of a session the SDK holds and has not terminated; None otherwise (the SDK answers 404)."""
    transport = manager._server_instances.get(session_id)
    if transport is None or transport.is_terminated:
        return None
    return transport


@contextlib.contextmanager
def holding(transport: Any) -> Iterator[None]:
    """Hold an SDK session while a call the SDK never sees runs (the fast path), as the SDK's own
    ``handle_request`` does: no idle expiry while a request is in flight, the countdown restarts after the last."""
    idle_scope = transport.idle_scope if transport is not None else None
    timeout = transport._idle_timeout if idle_scope is not None else None
    if idle_scope is None or not timeout:
        yield
        return
    transport._requests_in_flight += 1
    idle_scope.deadline = math.inf
    try:
        yield
    finally:
        transport._requests_in_flight -= 1
        if not transport._requests_in_flight:
            idle_scope.deadline = anyio.current_time() + timeout


def attach_session_manager(server: Any, manager: Any) -> None:
    """Give a low-level ``Server`` the session manager built for it (``Server.session_manager`` reads it; the
    SDK sets it only in ``streamable_http_app()``, which the gateway does not use)."""
    server._session_manager = manager


# --- MCP SDK: a request context's channels to the agent ---------------------------------------------------------


def connection_of(session: Any) -> Any:
    """The per-connection ``Connection`` of a ``ServerSession`` (its session id, its standalone outbound channel,
    its exit stack), or None."""
    return getattr(session, "_connection", None)


def request_channel(session: Any) -> Any:
    """The outbound channel of the request a ``ServerSession`` serves (messages related to that request go on its
    SSE stream), or None."""
    return getattr(session, "_request_outbound", None)


def drop_sdk_spans(server: Any) -> None:
    """Remove the SDK's own per-request span middleware: the gateway's call span replaces it (same names and
    attributes), so the tree is call -> auth, decision, forward instead of a second server span in between."""
    server.middleware = [m for m in server.middleware if type(m).__name__ != "OpenTelemetryMiddleware"]


# --- MCP SDK: its transport's error text ------------------------------------------------------------------------

_SAFE_INVALID = "Invalid JSON-RPC message: not a valid request, notification or response"


def scrub_transport_errors(send: Any) -> Any:
    """The SDK's streamable-HTTP transport answers a message that fails JSON-RPC validation with HTTP 400 and
    pydantic's whole report (model names, input values, links): internal text that must not reach an agent.
    This ``send`` holds any answer of status 400 or more, and replaces such a message with a fixed one (the code
    and the status are kept). Answers below 400 pass untouched, so the calls' path pays one comparison."""
    held: list[Any] = []

    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            held[:] = [message, b""]
            return
        if held and message["type"] == "http.response.body":
            held[1] += message.get("body", b"")
            if message.get("more_body", False):
                return
            start, body = held
            held.clear()
            body = _scrubbed(body)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await send(message)

    return wrapped


def _scrubbed(body: bytes) -> bytes:
    try:
        msg = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    error = msg.get("error") if isinstance(msg, dict) else None
    if not isinstance(error, dict):
        return body
    text = error.get("message")
    if isinstance(text, str) and ("alidation error" in text or "pydantic" in text):
        error["message"] = _SAFE_INVALID
        error.pop("data", None)
        return orjson.dumps(msg)
    return body


# --- MCP SDK: the per-version sieve of list results ----------------------------------------------------------------

LIST_ITEMS = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}
"""The list methods whose results the SDK sieves item by item, and the field that holds the items."""


class ListSieve:
    """The SDK's outbound sieve (``mcp_types.methods.serialize_server_result``: validate against the protocol
    version's surface, then dump it) for list results, with the sieved items kept per list.

    The SDK re-validates every item of every list it answers: ~10 µs a tool, a millisecond per 100-tool
    ``tools/list``, for items that only change when an upstream says so. The surface models of the list results have
    no validator across fields, so the sieve of a list result is the sieve of its envelope with the sieve of its
    items in place: this sieves the envelope each time and the items once per (method, version, items), keyed by the
    items' JSON, so a list that changes is a new key. A list that fails, fails as the SDK's sieve does, and nothing
    of it is kept. The items are parsed afresh from the kept JSON, so no two answers share an object. Kept per list,
    not per item: two large ``bytes`` a list live outside Python's small-object arenas, where a few hundred small
    ones kept among a request's garbage held ~1.5 MB of arenas resident. Bounded by ``budget`` bytes, dropped all at
    once when full; a list larger than the budget is never kept. The key is faithful for what the gateway lists: items
    from upstreams' JSON as orjson parsed it (no NaN or infinity, which orjson would write as null like ``None``)."""

    def __init__(self, sieve: Callable[..., dict[str, Any]], budget: int = 2 << 20):
        self.sieve = sieve
        self.budget = budget
        self.kept: dict[tuple[str, str, bytes], bytes] = {}
        self.size = 0

    def __call__(self, method: str, version: str, data: Any, **kwargs: Any) -> dict[str, Any]:
        field = LIST_ITEMS.get(method)
        if field is None or kwargs or not isinstance(data.get(field), list):
            return self.sieve(method, version, data, **kwargs)
        try:
            key = (method, version, orjson.dumps(data[field]))
        except TypeError:  # not JSON: the SDK's own sieve says what is wrong with it
            return self.sieve(method, version, data)
        kept = self.kept.get(key)
        if kept is None:
            shaped = self.sieve(method, version, data)
            kept = orjson.dumps(shaped[field])
            size = len(key[2]) + len(kept)
            if size > self.budget:
                return shaped  # a list larger than the whole budget is sieved each time
            if self.size + size > self.budget:
                self.kept.clear()
                self.size = 0
            self.kept[key] = kept
            self.size += size
            return shaped
        shaped = self.sieve(method, version, {**data, field: []})
        shaped[field] = orjson.loads(kept)
        return shaped


def sieve_list_items_once() -> None:
    """Put a ``ListSieve`` in front of the SDK's sieve, where its server runner calls it."""
    from mcp_types import methods

    if not isinstance(methods.serialize_server_result, ListSieve):
        methods.serialize_server_result = ListSieve(methods.serialize_server_result)
