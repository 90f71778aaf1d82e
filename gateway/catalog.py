"""The upstreams and what they offer: tools, prompts, resources, and how agent-facing names route back.

The aggregate endpoint names tools and prompts ``<upstream>__<name>``; resources keep their URIs and route to
the upstream that listed them. When two upstreams list the same resource URI, the upstream declared first in
the configuration wins (the later one's copy is not reachable through ``/mcp``, only through its own
``/mcp/<upstream>``). Lists are fetched when an upstream connects and again when it says they changed; with a
tool lock (``[integrity] lock``) each list is screened first and, in ``hide`` mode, only locked items are kept, so a
drifted item is missing to every request that names it (``gateway/integrity``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from connectors.base import CallTarget, Connector, PerAgent
from connectors.jsonrpc import JsonRpcPeer, RemoteError, UpstreamError
from gateway.config import UpstreamConfig
from gateway.connect import make_connector
from gateway.errors import METHOD_NOT_FOUND
from gateway.integrity.guard import Integrity
from gateway.upstream_sessions import SessionUpstreams

log = logging.getLogger("gateway.catalog")

SEP = "__"
SERVER_INFO_META = "io.modelcontextprotocol/serverInfo"

_LISTS = {
    "tools": ("tools/list", "tools"),
    "prompts": ("prompts/list", "prompts"),
    "resources": ("resources/list", "resources"),
    "templates": ("resources/templates/list", "resourceTemplates"),
}
_ANNOUNCE = {
    "tools": "notifications/tools/list_changed",
    "prompts": "notifications/prompts/list_changed",
    "resources": "notifications/resources/list_changed",
}
_CHANGED = {
    "notifications/tools/list_changed": "tools",
    "notifications/prompts/list_changed": "prompts",
    "notifications/resources/list_changed": "resources",
}


@dataclass
class Upstream:
    config: UpstreamConfig
    conn: Connector
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompts: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    templates: list[dict[str, Any]] = field(default_factory=list)
    template_patterns: list[re.Pattern[str]] = field(default_factory=list)
    """``templates`` compiled (``template_pattern``): a URI one of them matches is a resource of this upstream."""
    generation: int = 0
    """Bumped whenever a list changes, so caches keyed on it go stale."""
    sessions: SessionUpstreams | None = None
    """Set when the upstream runs with ``session_mode = "per_session"``."""
    list_errors: dict[str, str] = field(default_factory=dict)
    """List (tools, prompts, resources, templates) -> why its last fetch failed; cleared when one succeeds."""

    def __post_init__(self) -> None:
        # Judged once: an isinstance against a runtime protocol costs tens of microseconds, too much per call.
        self._per_agent = self.conn if isinstance(self.conn, PerAgent) else None

    @property
    def name(self) -> str:
        return self.config.name

    def connector_for(self, agent: Any, session_id: str | None) -> CallTarget:
        """The connection that serves this agent's request.

        One shared connection today; contained upstreams (a worker per agent and profile) and per-session upstream
        sessions (for server-to-client relaying) plug in here.
        """
        if self._per_agent is not None:  # contained and built-in upstreams: the agent's own worker
            return self._per_agent.connector_for(agent, session_id)
        if self.sessions is not None and session_id is not None:
            return self.sessions.connector(self, agent, session_id)
        return self.conn

    def matches_template(self, uri: str) -> bool:
        return any(p.fullmatch(uri) for p in self.template_patterns)

    def timeout_for(self, tool: str | None) -> float:
        if tool is not None and tool in self.config.tool_timeouts_s:
            return self.config.tool_timeouts_s[tool]
        return self.config.timeout_s


class Catalog:
    def __init__(
        self,
        configs: list[UpstreamConfig],
        base_dir: Any,
        on_state: Callable[[str, bool], None],
        containment: Any = None,
        integrity: Integrity | None = None,
    ):
        self._on_state = on_state
        self.integrity = integrity if integrity is not None else Integrity(None)
        """Screens every tools, prompts and templates list against the tool lock (``gateway/integrity``)."""
        self.upstreams: dict[str, Upstream] = {}
        self.session_upstreams = SessionUpstreams(base_dir)
        for cfg in configs:
            conn = make_connector(cfg, base_dir, self._state_changed, containment)
            up = Upstream(cfg, conn)
            if cfg.session_mode == "per_session":
                up.sessions = self.session_upstreams
                # The shared connection only lists: declare all that agents may bring, so nothing is left unlisted.
                conn.client_capabilities = {"roots": {}, "sampling": {}, "elicitation": {}}
            conn.on_notification = self._notification_handler(up)
            self.upstreams[cfg.name] = up
        self._resource_owner: dict[str, str] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self.on_list_changed: Callable[[str, str], Any] | None = None
        self._changing: dict[tuple[str, str, bool], bool] = {}
        """(upstream, list, announced) being refreshed -> whether another change arrived meanwhile (then once more)."""
        self.on_notification: Callable[[str, str, dict[str, Any]], Any] | None = None
        """Other notifications of shared upstream sessions (resource updates, log messages), for the relay."""

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        self.session_upstreams.bind(tg)
        for up in self.upstreams.values():
            await up.conn.start(tg)

    async def wait_ready(self, timeout: float) -> None:
        """Each upstream gets its own start_timeout_s: one that is down does not hold the others' start up."""
        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as tg:
                for up in self.upstreams.values():
                    tg.start_soon(up.conn.wait_ready, min(timeout, up.config.start_timeout_s))

    async def open_listed(self, tg: anyio.abc.TaskGroup, timeout: float) -> None:
        """Start every upstream and wait, at most ``timeout`` in all, until each is up and listed or has failed its
        start (for ``mcp-gateway lock``, which needs what the gateway itself would list)."""
        await self.start(tg)
        await self.wait_ready(timeout)
        with anyio.move_on_after(timeout):
            while any(u.conn.up and u.generation == 0 for u in self.upstreams.values()):
                await anyio.sleep(0.02)

    async def relist(self) -> None:
        """Fetch every connected upstream's lists again and tell the agents they changed (a new tool lock)."""
        for up in self.upstreams.values():
            if up.conn.up:
                for kind, method in _ANNOUNCE.items():
                    self.refresh_soon(up, kind, method)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.session_upstreams.aclose()
            for up in self.upstreams.values():
                await up.conn.aclose()

    def _state_changed(self, conn: JsonRpcPeer, up: bool) -> None:
        self._on_state(conn.name, up)
        if up and self._tg is not None:
            self._tg.start_soon(self.refresh, self.upstreams[conn.name], None)

    def _notification_handler(self, up: Upstream) -> Callable[[str, dict[str, Any]], Any]:
        async def handle(method: str, params: dict[str, Any]) -> None:
            kind = _CHANGED.get(method)
            if kind is not None and self._tg is not None:
                # Not inline: this runs in the connection's reader, which must stay free to read the list's answer.
                self.refresh_soon(up, kind, method)
            elif self.on_notification is not None:
                await self.on_notification(up.name, method, params)

        return handle

    def refresh_soon(self, up: Upstream, kind: str, announce: str | None = None) -> None:
        """Refresh one list in the background, then announce ``announce`` (a list_changed method) to the agents.

        Coalesced: a burst of changes is one refresh (and one more if a change came during it), never a task
        per notification (an upstream can send thousands in one read)."""
        key = (up.name, kind, announce is not None)
        if key not in self._changing and self._tg is not None:
            self._tg.start_soon(self._list_changed, up, kind, announce)
        self._changing[key] = key in self._changing

    async def _list_changed(self, up: Upstream, kind: str, method: str | None) -> None:
        key = (up.name, kind, method is not None)
        try:
            again = True
            while again:
                self._changing[key] = False
                await self.refresh(up, kind)
                if self.on_list_changed is not None and method is not None:
                    await self.on_list_changed(up.name, method)
                again = self._changing.get(key, False)
        finally:
            self._changing.pop(key, None)

    async def refresh(self, up: Upstream, only: str | None) -> None:
        """Fetch the upstream's lists (following pagination); a list it does not offer stays empty."""
        caps = up.conn.capabilities
        for kind, (method, key) in _LISTS.items():
            if only is not None and kind != only and not (only == "resources" and kind == "templates"):
                continue
            cap = "resources" if kind == "templates" else kind
            if cap not in caps:
                self.integrity.screen(up.name, kind, [])  # a locked list no longer offered: its items are removed
                continue
            items: list[dict[str, Any]] = []
            cursor = None
            try:
                for _ in range(100):
                    params: dict[str, Any] = {"cursor": cursor} if cursor else {}
                    result = await up.conn.request(method, params, up.config.timeout_s)
                    items.extend(i for i in result.get(key, []) if isinstance(i, dict))
                    cursor = result.get("nextCursor")
                    if not cursor:
                        break
            except RemoteError as exc:
                if exc.code != METHOD_NOT_FOUND:  # not offered (templates of a server with resources): empty
                    log.warning("upstream %s: cannot list %s: %s", up.name, kind, exc)
                    up.list_errors[kind] = str(exc)
                    continue
                items = []
            except UpstreamError as exc:
                log.warning("upstream %s: cannot list %s: %s", up.name, kind, exc)
                up.list_errors[kind] = str(exc)
                continue
            up.list_errors.pop(kind, None)
            items = self.integrity.screen(up.name, kind, items)  # with a tool lock: drifted items are not kept
            if kind == "templates":
                up.templates = items
                up.template_patterns = [template_pattern(str(t.get("uriTemplate", ""))) for t in items]
            else:
                ident = "uri" if kind == "resources" else "name"
                setattr(up, kind, {str(i.get(ident)): i for i in items if i.get(ident)})
        up.generation += 1
        self._reindex_resources()

    def _reindex_resources(self) -> None:
        owner: dict[str, str] = {}
        for up in self.upstreams.values():  # config order: the first upstream to list a URI owns it
            for uri in up.resources:
                owner.setdefault(uri, up.name)
        self._resource_owner = owner

    # --- routing -------------------------------------------------------------------------------------------

    def get(self, name: str) -> Upstream | None:
        return self.upstreams.get(name)

    def split(self, public_name: str, view: str | None) -> tuple[Upstream | None, str]:
        """Map an agent-facing tool or prompt name to (upstream, upstream's own name)."""
        if view is not None:
            return self.upstreams.get(view), public_name
        server, sep, name = public_name.partition(SEP)
        if not sep:
            return None, public_name
        return self.upstreams.get(server), name

    def resource_owner(self, uri: str, view: str | None) -> Upstream | None:
        if view is not None:
            return self.upstreams.get(view)
        name = self._resource_owner.get(uri)
        if name is not None:
            return self.upstreams[name]
        # A URI produced from a template goes to the first upstream (in configuration order) whose template
        # matches it.
        for up in self.upstreams.values():
            if up.matches_template(uri):
                return up
        return None

    def in_view(self, view: str | None) -> list[Upstream]:
        if view is not None:
            up = self.upstreams.get(view)
            return [up] if up is not None else []
        return list(self.upstreams.values())

    def ready(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"up": up.conn.up, "error": up.conn.last_error or None, "tools": len(up.tools)}
            for name, up in self.upstreams.items()
        }


# RFC 6570 expressions by operator: what an expansion of each can produce (levels 1-4, loosely: a template is
# the upstream's promise of what it serves, and matching decides only which URIs are routed, not how they are read).
_EXPANSION = {
    "": r"[^/?#]*",
    "+": r".*",
    "#": r"(?:#.*)?",
    ".": r"(?:\.[^/?#]*)*",
    "/": r"(?:/[^/?#]*)*",
    ";": r"(?:;[^/?#]*)*",
    "?": r"(?:\?[^#]*)?",
    "&": r"(?:&[^#]*)?",
}


def template_pattern(template: str) -> re.Pattern[str]:
    """A regular expression matching the URIs an RFC 6570 URI template expands to."""
    out, pos = [], 0
    for m in re.finditer(r"\{([^{}]*)\}", template):
        out.append(re.escape(template[pos : m.start()]))
        expr = m.group(1)
        op = expr[:1] if expr[:1] in "+#./;?&" else ""
        out.append(_EXPANSION[op])
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out), re.DOTALL)


def public_name(server: str, name: str, view: str | None) -> str:
    return name if view is not None else f"{server}{SEP}{name}"


def strip_server_meta(result: dict[str, Any]) -> dict[str, Any]:
    """Remove the upstream's identity from a forwarded result: the agent sees the gateway, not what is behind it."""
    meta = result.get("_meta")
    if isinstance(meta, dict) and SERVER_INFO_META in meta:
        meta = {k: v for k, v in meta.items() if k != SERVER_INFO_META}
        if meta:
            result["_meta"] = meta
        else:
            del result["_meta"]
    return result
