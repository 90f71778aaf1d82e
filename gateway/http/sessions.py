"""Session ownership: an MCP session id is usable only by the agent that opened it.

Every session is bound to its agent when the SDK opens it (its ``Mcp-Session-Id`` response header); a request
naming a session bound to another agent, or to none, gets the SDK's own answer to an unknown session, byte for
byte, so a probe cannot tell "someone else's" from "no such session". Bindings follow the SDK's own session
lifetime (idle expiry, DELETE). Also the per-agent session cap: one agent cannot fill ``max_sessions`` for all.

For a POST, this stage reads the body (bounded by ``BodyLimit``, after authentication) and hands it on in
``scope["state"]`` for the dispatcher.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import INVALID_REQUEST, LIMITED
from gateway.http.authenticate import agent_of
from gateway.http.bodylimit import read_body, replay
from gateway.http.headers import headers_of
from gateway.http.respond import jsonrpc_error

BODY_KEY = "gateway.body"
SESSION_KEY = "gateway.session"
RELEASE_KEY = "gateway.release"
"""Lists of a result the SDK answered this request with, emptied once the answer is on the wire (see ``hand_over``)."""
Owner = tuple[str, str, str]
"""(agent id, auth method, team): the identity a session belongs to."""


@dataclass(slots=True)
class BoundSession:
    owner: Owner
    last_seen: float
    client: dict[str, Any] = field(default_factory=dict)
    protocol_version: str | None = None


def initialize_of(body: bytes) -> tuple[dict[str, Any], str | None] | None:
    """clientInfo and protocol version of an initialize request (kept for the session's policy input); else None.

    Parsed, not matched: ``"\\u0069nitialize"`` and a batch holding an initialize open sessions too.
    """
    if b"initialize" not in body and b"\\u" not in body:
        return None
    try:
        msg = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    for item in msg if isinstance(msg, list) else [msg]:
        if isinstance(item, dict) and item.get("method") == "initialize":
            params = item.get("params")
            if not isinstance(params, dict):
                return {}, None
            info = params.get("clientInfo")
            info = info if isinstance(info, dict) else {}
            version = params.get("protocolVersion")
            return (
                {"name": info.get("name"), "version": info.get("version")},
                version if isinstance(version, str) else None,
            )
    return None


class SessionBinding:
    def __init__(
        self,
        app: ASGIApp,
        live_ids: Callable[[], Iterable[str]],
        max_per_agent: int,
        on_limited: Callable[[str], None],
        is_live: Callable[[str], bool] | None = None,
    ):
        if max_per_agent <= 0:
            raise ValueError("max_sessions_per_agent must be positive")
        self.app = app
        self.live_ids = live_ids
        self.is_live = is_live or (lambda sid: sid in set(live_ids()))
        """Whether the SDK still holds a session: checked on every use, so an expired or ended id is refused
        here (and unbound) rather than passed on to later stages on the strength of a stale binding."""
        self.max_per_agent = max_per_agent
        self.on_limited = on_limited
        self.sessions: dict[str, BoundSession] = {}
        self._open: Counter[Owner] = Counter()
        self._opening: Counter[Owner] = Counter()
        self._last_prune = time.monotonic()
        self._limit_message = (
            f"this agent already holds {max_per_agent} open sessions "
            "(server.max_sessions_per_agent): close one (DELETE) or let one expire"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sid = headers_of(scope).session_id
        agent = agent_of(scope)
        owner = (agent.id, agent.auth, agent.team)
        self._prune()  # at most every 5 s: bindings of expired sessions go even when no session opens
        if sid is not None:
            bound = self.sessions.get(sid)
            if bound is not None and bound.owner == owner and not self.is_live(sid):
                self._forget(sid, bound)  # expired or ended in the SDK: no longer this agent's, nor counted
                bound = None
            if bound is None or bound.owner != owner:
                await jsonrpc_error(send, 404, INVALID_REQUEST, "Session not found")
                return
        method = scope["method"]
        if method == "POST":
            body = await read_body(receive)
            scope["state"][BODY_KEY] = body
            receive = replay(body, receive)
            if sid is None:
                init = initialize_of(body)
                if init is not None:
                    await self._open_session(scope, receive, send, owner, init)
                    return
            else:
                scope["state"][SESSION_KEY] = self._touch(sid, owner)
        elif method == "DELETE" and sid is not None:
            send = self._unbinding_send(send, sid)
        elif sid is not None:
            self._touch(sid, owner)
        try:
            await self.app(scope, receive, send)
        finally:
            for items in scope["state"].pop(RELEASE_KEY, ()):
                items.clear()

    async def _open_session(
        self, scope: Scope, receive: Receive, send: Send, owner: Owner, init: tuple[dict[str, Any], str | None]
    ) -> None:
        if self._open[owner] + self._opening[owner] >= self.max_per_agent:
            self._prune(force=True)
            if self._open[owner] + self._opening[owner] >= self.max_per_agent:
                self.on_limited("sessions_per_agent")
                await jsonrpc_error(send, 429, LIMITED, self._limit_message)
                return
        self._opening[owner] += 1
        try:
            await self.app(scope, receive, self._binding_send(send, owner, init))
        finally:
            self._opening[owner] -= 1
            if not self._opening[owner]:
                del self._opening[owner]

    def held(self, owner: Owner) -> int:
        """Sessions this identity holds or is opening (for ``[[limits]] sessions``)."""
        return self._open[owner] + self._opening[owner]

    def _touch(self, sid: str, owner: Owner) -> BoundSession | None:
        info = self.sessions.get(sid)
        if info is not None:
            info.last_seen = time.monotonic()
        return info

    def _bind(self, sid: str, owner: Owner, init: tuple[dict[str, Any], str | None]) -> None:
        old = self.sessions.get(sid)
        if old is not None:
            self._forget(sid, old)
        self.sessions[sid] = BoundSession(owner, time.monotonic(), init[0], init[1])
        self._open[owner] += 1
        self._prune()

    def _forget(self, sid: str, info: BoundSession) -> None:
        del self.sessions[sid]
        self._open[info.owner] -= 1
        if not self._open[info.owner]:
            del self._open[info.owner]

    def _binding_send(self, send: Send, owner: Owner, init: tuple[dict[str, Any], str | None]) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                for k, v in message.get("headers", []):
                    if k.lower() == b"mcp-session-id":
                        self._bind(v.decode("latin-1"), owner, init)
                        break
            await send(message)

        return wrapped

    def _unbinding_send(self, send: Send, sid: str) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 300:
                info = self.sessions.get(sid)
                if info is not None:
                    self._forget(sid, info)
            await send(message)

        return wrapped

    def _prune(self, force: bool = False) -> None:
        """Drop bindings of sessions the SDK no longer holds (expired); at most every 5 s unless forced."""
        now = time.monotonic()
        if force or now - self._last_prune > 5:
            self._last_prune = now
            live = set(self.live_ids())
            for sid in [s for s in self.sessions if s not in live]:
                self._forget(sid, self.sessions[sid])


_RESULT_LISTS = ("tools", "prompts", "resources", "resourceTemplates", "contents", "content")


def hand_over(state: dict[str, Any] | None, result: Any) -> Any:
    """The result with its lists copied into lists only the SDK's answer holds, which the session gate empties once
    the HTTP request that asked for it has been answered.

    Why: the SDK's per-session message router (``StreamableHTTPServerTransport.connect``) keeps the last message it
    routed alive in its loop variable until the next one. With tools/call on the gateway's fast path, that last
    message is typically a session's ``tools/list`` answer: ~1 KB per tool, for as long as the session lives
    (~100 KB a session with 100 tools). Copying only the list keeps the answer intact on the wire, and never empties
    a list the pipeline (or a cache) still holds.
    """
    if state is None or not isinstance(result, dict):
        return result
    owned: list[list[Any]] = []
    out = dict(result)
    for key in _RESULT_LISTS:
        items = out.get(key)
        if isinstance(items, list) and items:
            out[key] = copy = list(items)
            owned.append(copy)
    if not owned:
        return result
    state.setdefault(RELEASE_KEY, []).extend(owned)
    return out
