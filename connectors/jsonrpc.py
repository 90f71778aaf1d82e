"""The JSON-RPC half of an upstream connection, shared by every transport.

Results stay raw dicts end to end (orjson in, orjson out): the gateway forwards what the upstream said and
never pays for model validation on the hot path. A transport supplies ``_send``; incoming messages go through
``_dispatch``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

from connectors.base import Limits, NotificationFn, ProgressFn, RequestFn

__all__ = ["JsonRpcPeer", "Limits", "NotificationFn", "ProgressFn", "RemoteError", "RequestFn", "UpstreamError"]

log = logging.getLogger("gateway.upstream")

PROTOCOL_VERSION = "2025-11-25"
CLIENT_INFO = {"name": "mcp-containment-gateway", "version": "0.1.0"}

BUSY = -32000
"""JSON-RPC error code (implementation-defined server error) of a server-to-client request refused as excess."""
_YIELD_EVERY = 32
"""Messages dispatched in a row before the reader lets the other tasks run (a burst must not hold the loop)."""


class UpstreamError(Exception):
    """The upstream could not answer: ``kind`` is a bounded label (unavailable, timeout, crashed, protocol,
    oversize). Its text reaches the agent: it names what happened, never internal exception text."""

    def __init__(self, server: str, kind: str, detail: str):
        super().__init__(f"upstream {server!r} {detail}")
        self.server = server
        self.kind = kind
        self.detail = detail


class RemoteError(Exception):
    """The upstream answered with a JSON-RPC error: passed to the agent as it is."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class _Pending:
    __slots__ = ("done", "error", "response")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.response: dict[str, Any] | None = None
        self.error: UpstreamError | None = None


def _key(rid: Any) -> int | str | None:
    """A request id usable as a key (JSON-RPC ids are strings or integers; anything else is not tracked)."""
    return rid if isinstance(rid, (int, str)) and not isinstance(rid, bool) else None


class JsonRpcPeer:
    """Request/response bookkeeping over one upstream session."""

    def __init__(self, name: str, limits: Limits | None = None):
        self.name = name
        self.limits = limits or Limits()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._progress: dict[str, ProgressFn] = {}
        self.on_notification: NotificationFn | None = None
        self.on_request: RequestFn | None = None
        self.server_info: dict[str, Any] = {}
        self.capabilities: dict[str, Any] = {}
        self.protocol_version = PROTOCOL_VERSION
        self.client_capabilities: dict[str, Any] = {"roots": {}}
        """What the gateway declares to the upstream; a per-session connection declares what its agent declared."""
        self.stateless_calls = True
        """Whether a ``tools/call`` may go out as a stateless 2026-era request when the server offers that era
        (HTTP upstreams). A per-session connection, which relays the server's requests to its agent, keeps its
        calls in the session."""
        self.preamble: list[tuple[str, dict[str, Any]]] = []
        """Requests to make before the next one (an agent's log level for a session that just came up)."""
        self._spawn: Callable[..., Any] | None = None
        """Starts a background task; server-to-client requests run there so they never block the reader."""
        self._answering: dict[int | str, anyio.CancelScope] = {}
        """Server-to-client requests being answered, by id: the upstream may cancel them."""
        self.ignored: dict[str, int] = {}
        """Messages from the upstream dropped as malformed, by kind (a fixed description)."""
        self._answers = 0
        """Server-to-client requests being answered. One beyond ``limits.max_server_requests`` is refused with
        BUSY from the reader itself, so a flood slows down to the pace of its refusals (this upstream's own
        stream waits) and never becomes thousands of tasks competing with every other agent's work."""
        self._burst = 0
        self._replying = anyio.Lock()
        """Answers to the upstream go one at a time: over HTTP each is a POST, and a flood answered in parallel
        would fill the event loop with this one upstream's traffic while every other agent's calls wait."""

    async def _send(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    async def request(
        self, method: str, params: dict[str, Any] | None, timeout: float, on_progress: ProgressFn | None = None
    ) -> dict[str, Any]:
        while self.preamble:
            first, first_params = self.preamble.pop(0)
            try:
                await self.request(first, first_params, timeout)
            except (UpstreamError, RemoteError) as exc:
                log.info("upstream %s: %s before %s failed: %s", self.name, first, method, exc)
        rid = next(self._ids)
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        token = None
        if on_progress is not None:
            token = f"gw-{rid}"
            params = dict(params or {})
            params["_meta"] = {**(params.get("_meta") or {}), "progressToken": token}
            self._progress[token] = on_progress
        if params is not None:
            msg["params"] = params
        pending = self._pending[rid] = _Pending()
        try:
            with anyio.fail_after(timeout):
                await self._send(msg)
                await pending.done.wait()
        except TimeoutError:
            await self._cancel(rid, f"timed out after {timeout:g} s")
            raise UpstreamError(self.name, "timeout", f"did not answer {method} within {timeout:g} s") from None
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._cancel(rid, "the agent cancelled the request")
            raise
        finally:
            self._pending.pop(rid, None)
            if token is not None:
                self._progress.pop(token, None)
        if pending.error is not None:
            raise pending.error
        resp = pending.response or {}
        if "error" in resp:
            err = resp["error"] if isinstance(resp["error"], dict) else {}
            code = err.get("code")
            raise RemoteError(
                code if type(code) is int else -32603, str(err.get("message", "upstream error")), err.get("data")
            )
        result = resp.get("result")
        if not isinstance(result, dict):
            raise UpstreamError(self.name, "protocol", "sent a response without a result object")
        return result

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        await self._send(msg)

    async def _cancel(self, rid: int, reason: str) -> None:
        try:
            with anyio.move_on_after(1):
                await self.notify("notifications/cancelled", {"requestId": rid, "reason": reason})
        except Exception:  # the connection may already be gone; the caller gets its error either way
            pass

    def _fail_all(self, error: UpstreamError) -> None:
        for pending in list(self._pending.values()):
            pending.error = error
            pending.done.set()

    def _ignored(self, what: str) -> None:
        """Count a malformed message that was dropped; log the first of each kind and every thousandth, not each
        (an upstream printing its own log lines on stdout must not flood the gateway's log)."""
        n = self.ignored[what] = self.ignored.get(what, 0) + 1
        if n == 1 or n % 1000 == 0:
            log.warning("upstream %s sent %s; ignored (%d so far)", self.name, what, n)

    async def _dispatch(self, msg: Any) -> None:
        """Route one incoming message. Never raises: whatever the upstream sends, or a handler does with it, the
        connection's reader goes on (an exception here would take the connection, and every call on it, down).

        Every few messages it yields to the event loop: a burst that arrived in one read (thousands of messages
        in one chunk) would otherwise be dispatched without a pause while every other agent's work waits."""
        self._burst += 1
        if self._burst >= _YIELD_EVERY:
            self._burst = 0
            await anyio.lowlevel.checkpoint()
        if not isinstance(msg, dict):
            self._ignored("a message that is not a JSON object")
            return
        method = msg.get("method")
        if method is None:
            rid = msg.get("id")
            pending = self._pending.get(rid) if type(rid) is int else None
            if pending is not None:
                pending.response = msg
                pending.done.set()
            return
        raw = msg.get("params")
        params: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if "id" in msg:
            if self._answers >= self.limits.max_server_requests:
                await self._refuse(msg["id"], method)
            elif self._spawn is not None:
                self._answers += 1
                self._spawn(self._answer, msg["id"], method, params)
            else:
                self._answers += 1
                await self._answer(msg["id"], method, params)
            return
        if not isinstance(method, str):
            self._ignored("a notification whose method is not a string")
            return
        if method == "notifications/cancelled":  # of one of its own requests the gateway is still answering
            key = _key(params.get("requestId"))
            scope = self._answering.get(key) if key is not None else None
            if scope is not None:
                scope.cancel()
                return
        try:
            if method == "notifications/progress":
                cb = self._progress.get(str(params.get("progressToken")))
                if cb is not None:
                    await cb(params)
            elif self.on_notification is not None:
                await self.on_notification(method, params)
        except Exception:
            log.exception("upstream %s: handling its %s failed", self.name, method)

    async def _answer(self, rid: Any, method: Any, params: dict[str, Any]) -> None:
        """Answer a server-to-client request. Never raises (it runs in the connection's task group). The upstream
        may cancel it meanwhile (notifications/cancelled): then it is not answered, as MCP asks."""
        key = _key(rid)
        try:
            with anyio.CancelScope() as scope:
                if key is not None:
                    self._answering[key] = scope
                try:
                    outcome = await self._outcome(method, params)
                finally:
                    if key is not None and self._answering.get(key) is scope:
                        del self._answering[key]
            if scope.cancelled_caught:
                return
            await self._reply({"jsonrpc": "2.0", "id": rid, **outcome}, method)
        finally:
            self._answers -= 1

    async def _refuse(self, rid: Any, method: Any) -> None:
        """Refuse a server-to-client request beyond the in-flight limit (counted, logged sparingly)."""
        self._ignored("server-to-client requests beyond the in-flight limit")
        message = f"the gateway is already answering {self.limits.max_server_requests} requests of this upstream"
        await self._reply({"jsonrpc": "2.0", "id": rid, "error": {"code": BUSY, "message": message}}, method)

    async def _reply(self, message: dict[str, Any], method: Any) -> None:
        try:
            async with self._replying:
                try:
                    await self._send(message)
                except TypeError:  # orjson cannot write it exactly (an integer beyond 64 bits): say so, not nothing
                    await self._send(
                        {
                            "jsonrpc": "2.0",
                            "id": message.get("id"),
                            "error": {
                                "code": -32603,
                                "message": "the client's answer held a value the gateway cannot forward "
                                "exactly (an integer beyond 64 bits)",
                            },
                        }
                    )
        except Exception as exc:  # the upstream went away, or refused the reply: nothing more to do about it
            log.info(
                "upstream %s: could not answer its %s request: %s", self.name, str(method)[:100], type(exc).__name__
            )

    async def _outcome(self, method: Any, params: dict[str, Any]) -> dict[str, Any]:
        """The ``result`` or ``error`` member of the answer to a server-to-client request."""
        try:
            if not isinstance(method, str):
                return {"error": {"code": -32600, "message": "Invalid Request: the method is not a string"}}
            if self.on_request is not None:
                return {"result": await self.on_request(method, params)}
            if method == "ping":
                return {"result": {}}
            if method == "roots/list":
                return {"result": {"roots": []}}
            return {
                "error": {
                    "code": -32601,
                    "message": f"{method} is not relayed to agents on a shared upstream session "
                    '(set session_mode = "per_session" on this upstream)',
                }
            }
        except RemoteError as exc:
            return {"error": {"code": exc.code, "message": exc.message}}
        except Exception:  # its text stays in the gateway's log: the upstream is not trusted with it either
            log.exception("upstream %s: relaying its %s request failed", self.name, method)
            return {"error": {"code": -32603, "message": f"gateway could not relay {method}"}}

    def _initialize_params(self) -> dict[str, Any]:
        caps = self.client_capabilities
        return {"protocolVersion": PROTOCOL_VERSION, "capabilities": caps, "clientInfo": CLIENT_INFO}

    def _adopt(self, result: dict[str, Any]) -> None:
        self.server_info = result.get("serverInfo") or {}
        self.capabilities = result.get("capabilities") or {}
        self.protocol_version = str(result.get("protocolVersion") or PROTOCOL_VERSION)
