"""Per-session upstream sessions: one upstream connection per agent session, for upstreams that ask for it.

A shared upstream session cannot say which agent a server-to-client request (sampling, elicitation, roots) or a
log message is meant for: over stdio nothing in the message names the call it belongs to. With
``session_mode = "per_session"`` every 2025-era agent session that reaches the upstream gets its own connection
(its own child process for stdio, its own MCP session for HTTP), declared with the agent's own client
capabilities, so everything that connection sends belongs to exactly one agent session. It is opened on first
use (from a started spare when one fits) and closed when the agent session ends. The stateless 2026 era has no
session and uses the shared connection.

A connection is opened only for an agent session the relay holds open (``SessionHooks.session_live``): a request
that names a session which ended (a stateless request still carrying its ``Mcp-Session-Id``) must not start an
upstream process that nothing would ever stop. A sweep closes, as a second lock, any connection whose session is
no longer live. Each upstream caps its sessions in all (``max_sessions``) and per agent
(``max_sessions_per_agent``), and all per-session connections together are capped too, so one agent cannot take
every connection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc

from connectors.jsonrpc import JsonRpcPeer, RemoteError, UpstreamError
from gateway.connect import make_connector
from gateway.errors import INTERNAL_ERROR

if TYPE_CHECKING:
    from gateway.catalog import Upstream

log = logging.getLogger("gateway.sessions")


class SessionHooks(Protocol):
    """What the relay supplies: where a per-session connection's messages go, and what it declares upstream."""

    def capabilities_for(self, session_id: str) -> dict[str, Any]: ...

    def session_live(self, session_id: str) -> bool:
        """Whether the agent session is open (it was opened and has not ended)."""
        ...

    async def upstream_request(self, upstream: str, session_id: str, method: str, params: dict[str, Any]) -> Any: ...

    async def upstream_notification(
        self, upstream: str, session_id: str, method: str, params: dict[str, Any]
    ) -> None: ...

    def upstream_ready(self, upstream: str, session_id: str) -> None: ...


@dataclass
class _Entry:
    conn: Any = None
    owner: tuple[str, str, str] | None = None
    session_id: str | None = None
    """None while the connection is a spare no session has taken yet."""
    capabilities: dict[str, Any] = field(default_factory=dict)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


def _owner(agent: Any) -> tuple[str, str, str]:
    return (str(agent.id), str(agent.auth), str(agent.team))


SWEEP_INTERVAL_S = 10.0
"""How often connections whose agent session is no longer live are looked for (and closed)."""


class SessionUpstreams:
    """Per-session connections, plus one started spare per stdio upstream so a new session does not wait for a
    process to start: the spare declared the capabilities of the last session, and is only handed to a session
    whose agent declared the same (what an upstream was told at initialize cannot be changed afterwards)."""

    def __init__(self, base_dir: Path, max_connections: int = 1000):
        self._base_dir = base_dir
        self._max = max_connections
        self._tg: anyio.abc.TaskGroup | None = None
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._spares: dict[str, _Entry] = {}
        self._closing = False
        self.hooks: SessionHooks | None = None

    def bind(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        tg.start_soon(self._sweep)

    def __len__(self) -> int:
        return len(self._entries)

    def connections(self, session_id: str) -> list[tuple[str, Any]]:
        """The (upstream name, connection) pairs this agent session has open."""
        return [(up, e.conn) for (sid, up), e in self._entries.items() if sid == session_id]

    def connector(self, up: Upstream, agent: Any, session_id: str) -> Any:
        """This session's connection to ``up``, opened (and started in the background) on first use."""
        key = (session_id, up.name)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.owner != _owner(agent):
                # The HTTP layer already binds session ids to agents; this is the second lock on the same door.
                raise UpstreamError(up.name, "unavailable", "has no session for this agent")
            return entry.conn
        if self._tg is None or self._closing:
            raise UpstreamError(up.name, "unavailable", "is not accepting new sessions (the gateway is stopping)")
        if self.hooks is None or not self.hooks.session_live(session_id):
            raise UpstreamError(
                up.name,
                "unavailable",
                "has no upstream session for this request: its agent session "
                "is not open (it ended, or the request is stateless)",
            )
        self._check_limits(up, _owner(agent))
        caps = self.hooks.capabilities_for(session_id)
        spare = self._spares.get(up.name)
        fits = spare is not None and spare.capabilities == caps
        entry = self._spares.pop(up.name) if fits else self._open(up, caps)
        entry.session_id, entry.owner = session_id, _owner(agent)
        self._entries[key] = entry
        if entry.conn.up and self.hooks is not None:  # a spare came up before it had a session to tell
            self.hooks.upstream_ready(up.name, session_id)
        log.info("upstream %s: opened a session for agent session %s", up.name, session_id[:8])
        if up.config.transport == "stdio" and up.name not in self._spares:
            self._spares[up.name] = self._open(up, caps)
        elif spare is not None and not fits:  # the agents changed: so does the spare
            self.spawn(self._close, self._spares.pop(up.name))
            self._spares[up.name] = self._open(up, caps)
        return entry.conn

    def _check_limits(self, up: Upstream, owner: tuple[str, str, str]) -> None:
        """Refuse one more connection past the global cap, the upstream's, or the agent's share of it."""
        if len(self._entries) >= self._max:
            raise UpstreamError(
                up.name, "unavailable", f"has reached the gateway's limit of {self._max} per-session connections"
            )
        mine = [e for (_, name), e in self._entries.items() if name == up.name]
        if len(mine) >= up.config.max_sessions:
            raise UpstreamError(up.name, "unavailable", f"has reached its limit of {up.config.max_sessions} sessions")
        per_agent = up.config.max_sessions_per_agent
        if sum(1 for e in mine if e.owner == owner) >= per_agent:
            raise UpstreamError(
                up.name,
                "unavailable",
                f"has reached its limit of {per_agent} sessions for one agent "
                "(close another session of this agent first)",
            )

    def _open(self, up: Upstream, caps: dict[str, Any]) -> _Entry:

        assert self._tg is not None
        hooks, name = self.hooks, up.name
        entry = _Entry(capabilities=caps)

        def on_state(conn: JsonRpcPeer, is_up: bool) -> None:
            if is_up and hooks is not None and entry.session_id is not None:
                hooks.upstream_ready(name, entry.session_id)

        conn = make_connector(up.config, self._base_dir, on_state)
        conn.client_capabilities = caps
        if isinstance(conn, JsonRpcPeer):
            conn.stateless_calls = False  # its upstream's requests reach this agent only through the session
        if hooks is not None:

            async def on_request(method: str, params: dict[str, Any]) -> Any:
                if entry.session_id is None:
                    if method == "ping":
                        return {}
                    raise RemoteError(INTERNAL_ERROR, "no agent session is attached to this upstream session yet")
                return await hooks.upstream_request(name, entry.session_id, method, params)

            async def on_notification(method: str, params: dict[str, Any]) -> None:
                if entry.session_id is not None:
                    await hooks.upstream_notification(name, entry.session_id, method, params)

            conn.on_request = on_request
            conn.on_notification = on_notification
        entry.conn = conn
        self._tg.start_soon(self._run, entry)
        return entry

    async def _run(self, entry: _Entry) -> None:
        with entry.scope:
            async with anyio.create_task_group() as tg:
                await entry.conn.start(tg)

    async def _sweep(self) -> None:
        """Close connections whose agent session is no longer live (its end was missed, or raced an open)."""
        while not self._closing:
            await anyio.sleep(SWEEP_INTERVAL_S)
            await self.prune()

    async def prune(self) -> None:
        hooks = self.hooks
        if hooks is None:
            return
        for sid in {sid for sid, _ in self._entries if not hooks.session_live(sid)}:
            log.info("agent session %s is no longer open: closing its upstream sessions", sid[:8])
            await self.close_session(sid)

    async def close_session(self, session_id: str) -> None:
        """The agent session ended: close every upstream connection it had."""
        for key in [k for k in self._entries if k[0] == session_id]:
            entry = self._entries.pop(key)
            await self._close(entry)
            log.info("upstream %s: closed the session of agent session %s", key[1], session_id[:8])

    async def _close(self, entry: _Entry) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await entry.conn.aclose()
            except Exception as exc:  # closing must go on for the others
                log.warning("upstream %s: error while closing a per-session connection: %s", entry.conn.name, exc)
        entry.scope.cancel()

    async def aclose(self) -> None:
        self._closing = True
        entries = list(self._entries.values()) + list(self._spares.values())
        self._entries.clear()
        self._spares.clear()
        for entry in entries:
            await self._close(entry)

    def spawn(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` in the background (server-to-client work must never block an upstream's reader)."""
        if self._tg is not None and not self._closing:
            self._tg.start_soon(fn, *args)
