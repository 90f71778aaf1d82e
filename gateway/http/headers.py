"""Request headers, parsed once per request.

One scan of ``scope["headers"]`` picks the headers the gateway decides on (identity, routing, framing) into an
immutable ``RequestHeaders`` kept in ``scope["state"]``; every later stage reads that object, never the raw list.
A request carrying two values of any of them gets 400 before anything reads them: with two ``Mcp-Session-Id``
headers, one reader (a dict, last wins) and another (the SDK, first wins) would see different sessions, and an
agent could act on another agent's session. The raw list is left as it is, so the SDK sees the same single
value as every stage.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import INVALID_REQUEST
from gateway.http.respond import jsonrpc_error

HEADERS_KEY = "gateway.headers"

# Headers that carry identity, routing or framing: one value each, or the request is refused.
SINGLE = frozenset(
    {
        b"authorization",
        b"mcp-session-id",
        b"mcp-protocol-version",
        b"host",
        b"origin",
        b"content-length",
        b"content-type",
        b"mcp-name",
        b"mcp-method",
        b"transfer-encoding",
        b"cookie",
        b"traceparent",
        b"last-event-id",
    }
)
_PARAM = b"mcp-param-"


class RequestHeaders(NamedTuple):
    """The single values of the headers the gateway reads (latin-1 text, as HTTP carries it). A tuple: immutable,
    and built in one step on the hot path."""

    host: str | None = None
    origin: str | None = None
    authorization: str | None = None
    session_id: str | None = None
    protocol_version: str | None = None
    content_length: str | None = None
    mcp_method: str | None = None
    mcp_name: str | None = None
    """``Mcp-Name`` decoded as UTF-8 (the 2026 era sends the tool name there, as in the body)."""
    traceparent: str | None = None
    has_mcp_param: bool = False
    """Any ``Mcp-Param-*`` header; looked for only on a request with ``Mcp-Method`` (the 2026 era's, the only
    ones that carry them: without Mcp-Method the fast path does not take the request anyway)."""
    tracestate: str | None = None
    forwarded_for: str | None = None
    """``X-Forwarded-For``, read only when the connection comes from a trusted proxy (gateway/http/clientaddr.py).
    Several such headers are one list in their order (RFC 9110, 5.3): a proxy that appends a line of its own
    (HAProxy's ``option forwardfor``) leaves its entry right-most, as one that extends the agent's line does."""


# Header name -> its field's index in RequestHeaders; -1 for single-valued headers the gateway does not read.
_SLOT = {
    b"host": 0,
    b"origin": 1,
    b"authorization": 2,
    b"mcp-session-id": 3,
    b"mcp-protocol-version": 4,
    b"content-length": 5,
    b"mcp-method": 6,
    b"mcp-name": 7,
    b"traceparent": 8,
    **{
        name: -1
        for name in SINGLE
        if name
        not in (
            b"host",
            b"origin",
            b"authorization",
            b"mcp-session-id",
            b"mcp-protocol-version",
            b"content-length",
            b"mcp-method",
            b"mcp-name",
            b"traceparent",
        )
    },
}
_NAME_SLOT = 7


def parse(raw: list[tuple[bytes, bytes]]) -> RequestHeaders | bytes:
    """The parsed headers, or the name of a header sent twice (ASGI names are lower case).

    The common case, no header name twice, costs one C-level dict build and a lookup per field; only a request
    that repeats some name (any name) is scanned header by header.
    """
    found = dict(raw)
    if len(found) != len(raw):
        return _parse_repeated(raw)
    get = found.get
    host, origin, auth, sid, version, length, method, name, parent = (
        get(b"host"),
        get(b"origin"),
        get(b"authorization"),
        get(b"mcp-session-id"),
        get(b"mcp-protocol-version"),
        get(b"content-length"),
        get(b"mcp-method"),
        get(b"mcp-name"),
        get(b"traceparent"),
    )
    state = get(b"tracestate")
    forwarded = get(b"x-forwarded-for")
    if length is not None and b"transfer-encoding" in found:
        return b"content-length"  # framed two ways: a proxy in front may read another body than the gateway
    return RequestHeaders(
        None if host is None else host.decode("latin-1"),
        None if origin is None else origin.decode("latin-1"),
        None if auth is None else auth.decode("latin-1"),
        None if sid is None else sid.decode("latin-1"),
        None if version is None else version.decode("latin-1"),
        None if length is None else length.decode("latin-1"),
        None if method is None else method.decode("latin-1"),
        None if name is None else name.decode("utf-8", "replace"),
        None if parent is None else parent.decode("latin-1"),
        False if method is None else any(k.startswith(_PARAM) for k in found),
        None if state is None else state.decode("latin-1"),
        None if forwarded is None else forwarded.decode("latin-1"),
    )


def _parse_repeated(raw: list[tuple[bytes, bytes]]) -> RequestHeaders | bytes:
    values: list[Any] = [None] * 9
    others: list[bytes] = []
    tracestate: list[bytes] | None = None
    forwarded: list[bytes] | None = None
    has_param = False
    slot_of = _SLOT.get
    for name, value in raw:
        slot = slot_of(name)
        if slot is None:
            if name.startswith(_PARAM):
                if name in others:
                    return name
                others.append(name)
                has_param = True
            elif name == b"tracestate":  # W3C: several tracestate headers are one list
                tracestate = [*(tracestate or []), value]
            elif name == b"x-forwarded-for":  # so are several X-Forwarded-For headers, in their order
                forwarded = [*(forwarded or []), value]
        elif slot >= 0:
            if values[slot] is not None:
                return name
            values[slot] = value.decode("utf-8", "replace") if slot == _NAME_SLOT else value.decode("latin-1")
        elif name in others:
            return name
        else:
            others.append(name)
    if values[5] is not None and b"transfer-encoding" in others:
        return b"content-length"
    state = b",".join(tracestate).decode("latin-1") if tracestate else None
    joined = b",".join(forwarded).decode("latin-1") if forwarded else None
    return RequestHeaders._make([*values, has_param, state, joined])


def _repeated_length(scope: Scope) -> bool:
    return sum(1 for k, _ in scope["headers"] if k == b"content-length") > 1


def headers_of(scope: Scope) -> RequestHeaders:
    """The request's parsed headers (set by ``ParseHeaders``, the outermost stage)."""
    headers: RequestHeaders = scope["state"][HEADERS_KEY]
    return headers


class ParseHeaders:
    """Outermost stage: parse once, refuse duplicates with 400, hand the result to every later stage."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        parsed = parse(scope["headers"])
        if isinstance(parsed, bytes):
            name = parsed.decode("latin-1")[:64]
            message = (
                f"the {name} header may be sent only once"
                if name != "content-length" or _repeated_length(scope)
                else "a request may not carry both Content-Length and Transfer-Encoding"
            )
            await jsonrpc_error(send, 400, INVALID_REQUEST, message)
            return
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state[HEADERS_KEY] = parsed
        await self.app(scope, receive, send)
