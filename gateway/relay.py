"""Server-to-client relaying: what upstream sessions send towards agents, and the agent-session state it needs.

An agent's session receives only what its own upstream sessions sent, and only what policy allows:

- requests (``sampling/createMessage``, ``elicitation/create``, ``roots/list``) come from per-session upstream
  connections (see ``upstream_sessions``), are decided and audited one by one, and go to the agent on the
  stream of the call in flight to that upstream (else the session's standalone stream);
- log messages (``notifications/message``, filtered by the level the agent set) and resource updates of a
  per-session connection go to its agent session; resource updates of a shared upstream go to the agent sessions
  that subscribed to that URI; ``notifications/*/list_changed`` go to every session whose endpoint shows that
  upstream. Notifications are decided once per session, upstream and kind, and the decision kept for a while,
  so a chatty upstream costs one decision, not one per message.

Every relayed request and notification is admitted by the same stage as the agent's own requests
(``gateway.admission``). Notifications about items follow hidden-equals-missing too: a
``notifications/resources/updated`` for a resource the agent may not see, and a ``list_changed`` of an upstream
none of whose items of that kind the agent may see (or was shown), never reach it.

Progress notifications are not requests: each belongs to one call in flight and is covered by that call's
decision (see ``Admission.bind_progress``); they never pass through here.

A shared upstream's notifications go to each session through its bounded ``Mailbox`` (one delivery task, oldest
dropped and counted when full), so an agent that stops reading costs a fixed buffer and holds up no one else. A
per-session upstream's are sent inline, in order with its call results: an agent that does not read them only
holds up its own upstream session's reader, and that pipe's flow control bounds the backlog.

The relay knows nothing of the SDK: the front end gives each session an ``Outlet`` that sends on its channels.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from connectors.jsonrpc import RemoteError, UpstreamError
from gateway.decide import Request
from gateway.errors import DENIED, INTERNAL_ERROR, METHOD_NOT_FOUND
from gateway.identity import Agent
from gateway.mailbox import Mailbox
from gateway.policy import Decision

if TYPE_CHECKING:
    from gateway.admission import Admission
    from gateway.catalog import Catalog, Upstream

log = logging.getLogger("gateway.relay")

LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
LIST_CHANGED = frozenset(
    {"notifications/tools/list_changed", "notifications/prompts/list_changed", "notifications/resources/list_changed"}
)
_CAPABILITY_OF = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}
_RELAYED_CAPABILITIES = ("sampling", "elicitation", "roots")
_NOTIFICATION_DECISION_TTL_S = 10.0
_LIST_KIND = {"tools": "tool", "prompts": "prompt", "resources": "resource"}


class Outlet(Protocol):
    """The agent end of one session: sends on the stream of a call in flight to ``upstream``, else standalone."""

    async def request(self, upstream: str, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]: ...

    async def notify(self, upstream: str | None, method: str, params: dict[str, Any]) -> None: ...


@dataclass
class AgentSession:
    id: str
    agent: Agent
    view: str | None
    outlet: Outlet
    capabilities: dict[str, Any] = field(default_factory=dict)
    client: dict[str, Any] = field(default_factory=dict)
    protocol_version: str | None = None
    log_level: str | None = None
    subscriptions: set[tuple[str, str]] = field(default_factory=set)
    """(upstream, uri) pairs this session subscribed to."""
    decisions: dict[tuple[str, str], tuple[float, bool]] = field(default_factory=dict)
    shown: set[tuple[str, str]] = field(default_factory=set)
    """(upstream, list kind) pairs this session was shown items of: their list_changed concerns it."""
    mailbox: Mailbox | None = None
    """Shared upstreams' notifications waiting for this session (bounded; see ``gateway.mailbox``)."""

    def sees(self, upstream: str) -> bool:
        return self.view is None or self.view == upstream


def level_passes(level: Any, threshold: str | None) -> bool:
    if threshold is None or threshold not in LEVELS:
        return True
    return level in LEVELS and LEVELS.index(level) >= LEVELS.index(threshold)


class Relay:
    def __init__(self, catalog: Catalog, admission: Admission):
        self.catalog = catalog
        self.admission = admission
        self.recorder = admission.recorder
        self.sessions: dict[str, AgentSession] = {}
        self._shared_subs: dict[tuple[str, str], set[str]] = {}
        """(upstream, uri) of shared upstreams -> agent sessions subscribed to it."""
        catalog.session_upstreams.hooks = self
        catalog.on_list_changed = self.list_changed
        catalog.on_notification = self.shared_notification

    # --- agent sessions ------------------------------------------------------------------------------------

    def open(self, session: AgentSession) -> AgentSession:
        return self.sessions.setdefault(session.id, session)

    async def close(self, session_id: str) -> None:
        """The agent session ended: close its upstream sessions, drop its subscriptions on shared upstreams."""
        session = self.sessions.pop(session_id, None)
        if session is not None and session.mailbox is not None:
            session.mailbox.close()
        await self.catalog.session_upstreams.close_session(session_id)
        if session is None:
            return
        for upstream, uri in list(session.subscriptions):
            up = self.catalog.get(upstream)
            if up is not None and up.sessions is None:
                await self._shared_unsubscribe(up, uri, session_id)

    # --- policy --------------------------------------------------------------------------------------------

    def _request(self, session: AgentSession, action: str, arguments: Any = None, uri: str | None = None) -> Request:
        return Request(
            agent=session.agent,
            action=action,
            view=session.view,
            arguments=arguments,
            uri=uri,
            session_id=session.id,
            client=session.client,
            protocol_version=session.protocol_version,
        )

    async def decide(self, req: Request, server: str | None, **input_fields: Any) -> Decision:
        """Admit one relayed message (decide, record, count); one that cannot be recorded is not relayed."""
        return await self.admission.relayed(req, server, **input_fields)

    async def notification_allowed(self, session: AgentSession, upstream: str, method: str) -> bool:
        """Decided once per session, upstream and kind for a while: a chatty upstream (or one sending updates
        for ever new URIs) costs one decision and one record, not one per message. What the notification is
        about is judged by ``sees_item`` (the cached, bounded per-item visibility)."""
        key = (upstream, method)
        now = time.monotonic()
        hit = session.decisions.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        decision = await self.decide(self._request(session, method), upstream)
        session.decisions[key] = (now + _NOTIFICATION_DECISION_TTL_S, decision.allow)
        return decision.allow

    async def sees_item(self, session: AgentSession, upstream: str, method: str, params: dict[str, Any]) -> bool:
        """Hidden equals missing for notifications: may this session's agent see what the notification is about?

        A resource update: the resource, when its upstream lists it (a URI from a template was subscribed to
        under its own decision). A list change: when the agent was shown items of that list, or may see one now.
        """
        up = self.catalog.get(upstream)
        if up is None or not session.sees(upstream):
            return False
        req = self._request(session, method)
        if method == "notifications/resources/updated":
            uri = str(params.get("uri", ""))
            res = up.resources.get(uri)
            if res is None:
                return True
            return await self.admission.visible(req, upstream, "resource", uri, res.get("annotations") or {})
        if method in LIST_CHANGED:
            kind = _kind(method)
            if (upstream, kind) in session.shown:
                return True
            items: dict[str, dict[str, Any]] = getattr(up, kind)
            for name, item in items.items():
                if await self.admission.visible(req, upstream, _LIST_KIND[kind], name, item.get("annotations") or {}):
                    return True
            return False
        return True

    async def _admitted(self, session: AgentSession, upstream: str, method: str, params: dict[str, Any]) -> bool:
        return await self.sees_item(session, upstream, method, params) and await self.notification_allowed(
            session, upstream, method
        )

    # --- upstream -> agent (SessionHooks for per-session connections) --------------------------------------

    def capabilities_for(self, session_id: str) -> dict[str, Any]:
        """The client capabilities a per-session connection declares upstream: exactly the agent's own."""
        session = self.sessions.get(session_id)
        caps = session.capabilities if session is not None else {}
        return {k: caps[k] for k in _RELAYED_CAPABILITIES if k in caps}

    def session_live(self, session_id: str) -> bool:
        return session_id in self.sessions

    def upstream_ready(self, upstream: str, session_id: str) -> None:
        """A session's upstream connection is up: the level the agent set goes first, before the call that opened it."""
        session = self.sessions.get(session_id)
        if session is None or session.log_level is None:
            return
        conn = dict(self.catalog.session_upstreams.connections(session_id)).get(upstream)
        if conn is not None and "logging" in conn.capabilities:
            conn.preamble.append(("logging/setLevel", {"level": session.log_level}))

    async def _send_level(self, conn: Any, up: Upstream, level: str) -> None:
        try:
            await conn.request("logging/setLevel", {"level": level}, up.config.timeout_s)
        except (UpstreamError, RemoteError) as exc:
            log.info("upstream %s: logging/setLevel not applied: %s", up.name, exc)

    async def upstream_request(self, upstream: str, session_id: str, method: str, params: dict[str, Any]) -> Any:
        if method == "ping":
            return {}
        session = self.sessions.get(session_id)
        if session is None:
            raise RemoteError(INTERNAL_ERROR, "the agent session this upstream session served has ended")
        capability = _CAPABILITY_OF.get(method)
        if capability is None:
            raise RemoteError(METHOD_NOT_FOUND, f"{method} is not relayed by the gateway")
        if capability not in session.capabilities:
            raise RemoteError(METHOD_NOT_FOUND, f"the agent's client does not support {capability}")
        req = self._request(session, method, arguments=params)
        decision = await self.decide(req, upstream)
        if not decision.allow:
            await self.recorder.outcome(req, "denied", 0.0)
            reasons = "; ".join(decision.reasons) or "no rule allows this request"
            raise RemoteError(DENIED, f"Denied by the gateway's policy: {reasons}. (decision id {req.decision_id})")
        up = self.catalog.get(upstream)
        timeout = up.config.timeout_s if up is not None else 60.0
        t0 = time.perf_counter()
        outcome, error = "agent_error", None
        try:  # every way out records an outcome: an allowed request never stays without one in the audit log
            result = await session.outlet.request(upstream, method, params, timeout)
            outcome = "ok"
            return result
        except RemoteError as exc:
            error = exc.message
            raise
        except TimeoutError:
            outcome = "agent_timeout"
            raise RemoteError(INTERNAL_ERROR, f"the agent did not answer {method} within {timeout:g} s") from None
        except anyio.get_cancelled_exc_class():  # the upstream session ended (its agent session did)
            outcome = "cancelled"
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"  # in the audit record and the log, never to the upstream
            log.error("relaying %s to the agent failed (decision id %s): %s", method, req.decision_id, error)
            raise RemoteError(INTERNAL_ERROR, f"the gateway could not pass {method} to the agent") from None
        finally:
            await self.recorder.outcome(req, outcome, time.perf_counter() - t0, error)

    async def upstream_notification(self, upstream: str, session_id: str, method: str, params: dict[str, Any]) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            return
        if method == "notifications/message" and not level_passes(params.get("level"), session.log_level):
            return
        if method in LIST_CHANGED:
            up = self.catalog.get(upstream)
            if up is not None:
                self.catalog.refresh_soon(up, _kind(method))
        elif method not in ("notifications/message", "notifications/resources/updated"):
            log.debug("upstream %s sent %s; not relayed", upstream, method)
            return
        if await self._admitted(session, upstream, method, params):
            await session.outlet.notify(upstream, method, params)

    # --- shared upstream sessions --------------------------------------------------------------------------

    async def list_changed(self, upstream: str, method: str) -> None:
        for session in list(self.sessions.values()):
            if session.sees(upstream) and await self._admitted(session, upstream, method, {}):
                self._fan_out(session, method, {})

    async def shared_notification(self, upstream: str, method: str, params: dict[str, Any]) -> None:
        if method != "notifications/resources/updated":
            # A shared session cannot tell which agent a log message is about: it stays in the gateway's log.
            log.debug("upstream %s (shared session) sent %s; not relayed", upstream, method)
            return
        uri = str(params.get("uri", ""))
        for session_id in list(self._shared_subs.get((upstream, uri), ())):
            session = self.sessions.get(session_id)
            if session is not None and await self._admitted(session, upstream, method, params):
                self._fan_out(session, method, params)

    def _fan_out(self, session: AgentSession, method: str, params: dict[str, Any]) -> None:
        """Queue a shared upstream's notification for one session: its own delivery task sends it, so an agent
        that stops reading its stream holds up neither the shared upstream's reader (every other agent's calls)
        nor the other subscribers, and a flood towards it costs a bounded buffer (the oldest are dropped, counted)
        instead of a task per message."""
        if session.id not in self.sessions:
            return
        if session.mailbox is None:
            session.mailbox = Mailbox(
                lambda m, p: session.outlet.notify(None, m, p),
                self.catalog.session_upstreams.spawn,
                self.dropped,
            )
        session.mailbox.put(method, params)

    def dropped(self, method: str) -> None:
        """Count a notification a full mailbox dropped."""
        self.admission.metrics.notifications_dropped.labels(method).inc()

    # --- agent -> upstream: state the relay keeps for the pipeline -----------------------------------------

    async def set_level(self, session: AgentSession, level: str, upstreams: list[Upstream]) -> None:
        """Remember the session's level (it filters what is relayed) and pass it to its per-session upstreams."""
        session.log_level = level
        conns = dict(self.catalog.session_upstreams.connections(session.id))
        for up in upstreams:
            conn = conns.get(up.name)
            if conn is not None and conn.up and "logging" in conn.capabilities:
                await self._send_level(conn, up, level)

    async def subscribe(self, session: AgentSession, up: Upstream, uri: str, forward: Any) -> dict[str, Any]:
        """Subscribe the session to ``uri``: per-session upstreams get the request; shared ones once per URI."""
        if up.sessions is not None:
            result = await forward("resources/subscribe", {"uri": uri})
        else:
            subscribers = self._shared_subs.setdefault((up.name, uri), set())
            if not subscribers:
                try:
                    await forward("resources/subscribe", {"uri": uri})
                except BaseException:
                    self._shared_subs.pop((up.name, uri), None)
                    raise
            subscribers.add(session.id)
            result = {}
        session.subscriptions.add((up.name, uri))
        return result

    async def unsubscribe(self, session: AgentSession, up: Upstream, uri: str, forward: Any) -> dict[str, Any]:
        session.subscriptions.discard((up.name, uri))
        if up.sessions is not None:
            return dict(await forward("resources/unsubscribe", {"uri": uri}))
        await self._shared_unsubscribe(up, uri, session.id, forward)
        return {}

    async def _shared_unsubscribe(self, up: Upstream, uri: str, session_id: str, forward: Any = None) -> None:
        subscribers = self._shared_subs.get((up.name, uri))
        if subscribers is None:
            return
        subscribers.discard(session_id)
        if subscribers:
            return
        del self._shared_subs[(up.name, uri)]
        try:
            if forward is not None:
                await forward("resources/unsubscribe", {"uri": uri})
            elif up.conn.up:
                await up.conn.request("resources/unsubscribe", {"uri": uri}, up.config.timeout_s)
        except (UpstreamError, RemoteError) as exc:
            log.info("upstream %s: unsubscribe from %s failed: %s", up.name, uri, exc)


def _kind(method: str) -> str:
    return method.split("/")[1]
