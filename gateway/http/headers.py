"""Request headers, parsed once per request.

One scan of ``scope["headers"]`` picks the headers the gateway decides on (identity, routing, framing) into an
immutable ``RequestHeaders`` kept in ``scope["state"]``; every later stage reads that object, never the raw list.
A request carrying two values of any of them gets 400 before anything reads them: with two ``Mcp-Session-Id``
headers, one reader (a dict, last wins) and another (the SDK, first wins) would see different sessions, and an
agent could act on another agent's session. The raw list is left as it is, so the SDK sees the same single
value as every stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import INVALID_REQUEST
from gateway.http.respond import jsonrpc_error

HEADERS_KEY = "gateway.headers"

# Headers that carry identity, routing or framing: one value each, or the request is refused.
SINGLE = frozenset({
    b"authorization", b"mcp-session-id", b"mcp-protocol-version", b"host", b"origin", b"content-length",
    b"content-type", b"mcp-name", b"mcp-method", b"transfer-encoding", b"cookie", b"traceparent",
    b"last-event-id",
})
_PARAM = b"mcp-param-"


@dataclass(frozen=True, slots=True)
class RequestHeaders:
    """The single values of the headers the gateway reads (latin-1 text, as HTTP carries it)."""

    host: str | None = None
    origin: str | None = None
    authorization: str | None = None
    session_id: str | None = None
    protocol_version: str | None = None
    content_length: str | None = None
    mcp_method: str | None = None
    mcp_name: str | None = None
    """``Mcp-Name`` decoded as UTF-8 (the 2026 era sends the tool name there, as in the body)."""
    has_mcp_param: bool = False
    traceparent: str | None = None
    tracestate: str | None = None


def parse(raw: list[tuple[bytes, bytes]]) -> RequestHeaders | bytes:
    """The parsed headers, or the name of a header sent twice (ASGI names are lower case)."""
    seen: dict[bytes, bytes] = {}
    has_param = False
    tracestate: list[bytes] = []
    for name, value in raw:
        if name in SINGLE:
            if name in seen:
                return name
            seen[name] = value
        elif name.startswith(_PARAM):
            if name in seen:
                return name
            seen[name] = value
            has_param = True
        elif name == b"tracestate":
            tracestate.append(value)  # W3C: several tracestate headers are one list
    if not seen:
        return RequestHeaders(tracestate=",".join(v.decode("latin-1") for v in tracestate) or None)
    get = seen.get

    def text(name: bytes) -> str | None:
        value = get(name)
        return None if value is None else value.decode("latin-1")

    name_raw = get(b"mcp-name")
    return RequestHeaders(
        host=text(b"host"),
        origin=text(b"origin"),
        authorization=text(b"authorization"),
        session_id=text(b"mcp-session-id"),
        protocol_version=text(b"mcp-protocol-version"),
        content_length=text(b"content-length"),
        mcp_method=text(b"mcp-method"),
        mcp_name=None if name_raw is None else name_raw.decode("utf-8", "replace"),
        has_mcp_param=has_param,
        traceparent=text(b"traceparent"),
        tracestate=",".join(v.decode("latin-1") for v in tracestate) or None,
    )


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
            await jsonrpc_error(send, 400, INVALID_REQUEST, f"the {name} header may be sent only once")
            return
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state[HEADERS_KEY] = parsed
        await self.app(scope, receive, send)
