"""A lean front end for the hottest request: ``tools/call`` on an established 2025-era session.

The SDK's server path costs milliseconds per message (model validation both ways, per-request task and stream
plumbing). For a plain ``tools/call`` — a single JSON-RPC request on a session the SDK opened for this agent,
with no progress token — the gateway answers itself: orjson on the raw body, the same pipeline (decide,
record, forward, record), a JSON response. Anything else (initialize, lists, notifications, batches, progress,
malformed input) goes to the SDK unchanged, which stays the reference for the protocol.

The stateless 2026-07-28 era takes the fast path too when the request is self-consistent: its
``MCP-Protocol-Version``, ``Mcp-Method`` and ``Mcp-Name`` headers match the body (a mismatch goes to the SDK, which
answers ``HEADER_MISMATCH``), and the result is stamped with the gateway's server identity as the SDK would.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import anyio
import orjson
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.types import Receive, Send

from gateway import sdk_adapter, stages
from gateway.decide import Request
from gateway.errors import INTERNAL_ERROR, REQUEST_CANCELLED
from gateway.forward import GatewayError
from gateway.http.disconnect import watch_disconnect
from gateway.http.headers import RequestHeaders
from gateway.identity import Agent
from gateway.pipeline import Pipeline

log = logging.getLogger("gateway.fastpath")

_JSON = [(b"content-type", b"application/json")]


def parse_tool_call(body: bytes) -> dict[str, Any] | None:
    """The message, if it is exactly one well-formed tools/call request the fast path may answer; else None."""
    if b'"tools/call"' not in body:
        return None
    try:
        msg = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0" or msg.get("method") != "tools/call":
        return None
    rid = msg.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (int, str)):
        return None
    params = msg.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("name"), str):
        return None
    args = params.get("arguments")
    if args is not None and not isinstance(args, dict):
        return None
    meta = params.get("_meta")
    if meta is not None and (not isinstance(meta, dict) or "progressToken" in meta):
        return None  # progress needs an SSE stream: the SDK path relays it
    if _LONG_NUMBER.search(body) is not None and _lossy(params):
        return None  # an integer orjson read as a float: the SDK path parses it exactly (and refuses it)
    return msg


_LONG_NUMBER = re.compile(rb"\d{19}")
"""A run of digits as long as the shortest integer outside 64 bits: only then can a float below be one."""


def _lossy(value: Any) -> bool:
    """Whether a parsed value holds a float that may stand for an integer literal beyond 64 bits: orjson reads
    those as floats (10**20 as 1e20), so the policy would see, and the upstream get, a number the agent did not
    send. Iterative: orjson nests deeper than the recursion limit."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float):
            if v.is_integer() and abs(v) >= _INT64:
                return True
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


_INT64 = 2.0**63


_PROTOCOL_META = "io.modelcontextprotocol/protocolVersion"
_CLIENT_META = "io.modelcontextprotocol/clientInfo"
_SERVER_META = "io.modelcontextprotocol/serverInfo"


def modern_client(msg: dict[str, Any], headers: RequestHeaders) -> dict[str, Any] | None:
    """clientInfo of a 2026-era request whose headers agree with its body; None sends it to the SDK."""
    version = headers.protocol_version
    if version not in MODERN_PROTOCOL_VERSIONS:
        return None
    meta = msg["params"].get("_meta") or {}
    if meta.get(_PROTOCOL_META) != version:
        return None
    if headers.mcp_method != "tools/call" or headers.mcp_name != msg["params"]["name"]:
        return None
    if headers.has_mcp_param:
        return None
    info = meta.get(_CLIENT_META)
    if not isinstance(info, dict):
        return None
    return {"name": info.get("name"), "version": info.get("version")}


class FastPath:
    def __init__(self, pipeline: Pipeline, managers: dict[str | None, StreamableHTTPSessionManager]):
        self._pipeline = pipeline
        self._managers = managers
        self._inflight: dict[tuple[str | None, Any], anyio.CancelScope] = {}
        self._stamps = {
            view: {"name": "mcp-gateway" if view is None else view, "version": version}
            for view in managers
            for version in [getattr(managers[view].app, "version", "")]
        }

    def _live_transport(self, view: str | None, session_id: str) -> Any:
        # Only sessions the SDK opened and still holds (an unknown or expired id falls through to the SDK's 404).
        return sdk_adapter.live_transport(self._managers[view], session_id)

    def _per_session(self, name: str, view: str | None) -> bool:
        up, _ = self._pipeline.catalog.split(name, view)
        return up is not None and up.config.session_mode == "per_session"

    def cancel(self, session_id: str, body: bytes) -> None:
        """Cancel a fast-path call named by an agent's notifications/cancelled (the SDK never saw that call)."""
        if b"notifications/cancelled" not in body:
            return
        try:
            msg = orjson.loads(body)
            rid = msg["params"]["requestId"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if msg.get("method") == "notifications/cancelled" and isinstance(rid, (int, str)):
            scope = self._inflight.get((session_id, rid))
            if scope is not None:
                scope.cancel()

    async def handle(
        self,
        msg: dict[str, Any],
        agent: Agent,
        view: str | None,
        session_id: str | None,
        client: dict[str, Any],
        protocol_version: str | None,
        remote_addr: str | None,
        receive: Receive,
        send: Send,
    ) -> bool:
        """Answer the call; False when it must go to the SDK.

        The SDK keeps a call whose upstream relays server-to-client requests to this session (per-session
        upstreams), and any call on a session it does not hold.
        """
        params = msg["params"]
        if self._per_session(params["name"], view):
            return False
        transport = None
        modern = session_id is None
        if not modern:
            transport = self._live_transport(view, session_id or "")
            if transport is None:
                return False
        req = Request(
            agent=agent,
            action="tools/call",
            view=view,
            name=params["name"],
            arguments=params.get("arguments") or {},
            session_id=session_id,
            client=client,
            protocol_version=protocol_version,
            request_id=msg["id"],
            remote_addr=remote_addr,
        )
        sent = False
        key = (session_id, msg["id"])
        with sdk_adapter.holding(transport), anyio.CancelScope() as scope:
            if session_id is not None:
                self._inflight[key] = scope
            watcher = watch_disconnect(receive, scope)  # cancelled before the scope is left
            try:
                body = await self._answer(req, msg, view, modern)
                sent = True
                with anyio.CancelScope(shield=True):  # a late cancellation must not cut the answer in half
                    await _respond(send, body)
            finally:
                watcher.cancel()
                self._inflight.pop(key, None)
        if not sent:  # cancelled by the agent: the request is over, answer it as such
            error = {"code": REQUEST_CANCELLED, "message": "Request cancelled"}
            await _respond(send, orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "error": error}))
        stages.end("answer")
        return True

    async def _answer(self, req: Request, msg: dict[str, Any], view: str | None, modern: bool) -> bytes:
        try:
            result = await self._pipeline.call_tool(req)
            if modern:
                result.setdefault("resultType", "complete")
                result["_meta"] = {**(result.get("_meta") or {}), _SERVER_META: self._stamps[view]}
            return orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result})
        except GatewayError as exc:
            error: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.data is not None:
                error["data"] = exc.data
            return orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "error": error})
        except Exception:
            log.exception("tools/call failed (decision id %s)", req.decision_id)
            return orjson.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": msg["id"],
                    "error": {
                        "code": INTERNAL_ERROR,
                        "message": f"internal gateway error (decision id {req.decision_id})",
                    },
                }
            )


async def _respond(send: Send, body: bytes) -> None:
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_JSON, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
    except OSError:
        pass  # the agent went away
