"""Fleet routing: a request that belongs to another live replica is forwarded to it in one authenticated hop.

An agent's 2025-era sessions (``initialize`` and every request naming ``Mcp-Session-Id``) and its requests that
need its own worker (a contained or built-in upstream) belong to the replica that rendezvous hashing of the agent
id picks over live members (``gateway/fleet/membership.py``); a 2026-era request that needs no worker is served
where it lands. The load balancer in front needs no MCP knowledge: round robin works, affinity saves the hop.

Runs after authentication: the agent decides the owner. The owner re-authenticates the agent's own credentials
(they travel unchanged) and accepts the hop only with a valid ``Mcp-Gateway-Hop`` proof (``gateway/fleet/hop.py``)
naming the same agent; it then serves the request itself. A request that arrives with a hop header that fails
the check is refused (403), counted, never served.

An owner that does not accept the connection within ``hop_connect_timeout_s`` (a killed replica refuses at once)
is marked suspect and the request re-routed over the remaining members: usually served here, where a session id
of the dead owner gets the SDK's 404 and the client re-initializes. A hop that fails after it was sent is not
retried (the call may have run): the agent gets a JSON-RPC error, 502.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import DENIED, INTERNAL_ERROR
from gateway.fleet import hop
from gateway.http.authenticate import agent_of
from gateway.http.bodylimit import read_body, replay
from gateway.http.dispatch import VIEW_KEY
from gateway.http.headers import headers_of
from gateway.http.respond import jsonrpc_error
from gateway.http.sessions import initialize_of
from gateway.metrics import Metrics

if TYPE_CHECKING:  # redis is imported only by a gateway configured with [fleet]
    from gateway.fleet.membership import Member
    from gateway.fleet.runtime import Fleet

log = logging.getLogger("gateway.fleet")

_DROP_REQUEST = frozenset({b"connection", b"keep-alive", b"te", b"upgrade", b"proxy-connection", hop.HEADER})
_DROP_RESPONSE = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "date", "server"}
)
_WORKER_METHODS = frozenset({"tools/call", "prompts/get"})


def is_worker_upstream(up: Any) -> bool:
    """Contained and built-in upstreams serve each agent from its own worker (and workspace)."""
    return bool(up is not None and (up.config.transport == "builtin" or up.config.containment is not None))


class FleetRoute:
    def __init__(self, app: ASGIApp, fleet: Fleet, catalog: Any, metrics: Metrics):
        self.app = app
        self.fleet = fleet
        self.membership = fleet.membership
        self.catalog = catalog
        self.hops = metrics.fleet_hops

    @classmethod
    def wrap(cls, app: ASGIApp, gw: Any) -> ASGIApp:
        """The stage when ``[fleet]`` is configured; else ``app`` as it is (one line in ``build_agent_app``)."""
        return app if gw.fleet is None else cls(app, gw.fleet, gw.catalog, gw.metrics)

    def belongs_to_owner(self, scope: Scope, body: bytes) -> bool:
        headers = headers_of(scope)
        if headers.session_id is not None:
            return True  # a 2025-era session lives on the replica that opened it: the agent's owner
        if scope["method"] != "POST":
            return False
        if headers.protocol_version in MODERN_PROTOCOL_VERSIONS and headers.mcp_method is not None:
            view = scope["state"][VIEW_KEY]
            if view is not None and headers.mcp_method != "tools/list":
                return is_worker_upstream(self.catalog.get(view))
            if headers.mcp_method in _WORKER_METHODS and headers.mcp_name:
                return is_worker_upstream(self.catalog.split(headers.mcp_name, view)[0])
            return False
        return initialize_of(body) is not None  # a new 2025-era session: where the agent's sessions live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        agent = agent_of(scope)
        method = scope["method"]
        body = await read_body(receive) if method == "POST" else b""
        inner = replay(body, receive) if method == "POST" else receive
        raw = dict(scope["headers"]).get(hop.HEADER)
        if raw is not None:
            try:
                _, client = self.fleet.verifier.verify(
                    raw.decode("latin-1"), method, scope["path"], _query(scope), body, agent.id
                )
            except ValueError as exc:
                self.hops.labels("refused").inc()
                log.warning("fleet: refused a hop (%s)", exc)
                await jsonrpc_error(send, 403, DENIED, "invalid inter-replica hop")
                return
            self.hops.labels("received").inc()
            if client:
                scope["client"] = (client, 0)
            await self.app(scope, inner, send)
            return
        if not self.belongs_to_owner(scope, body):
            await self.app(scope, inner, send)
            return
        for _ in range(3):  # re-routed at most twice: each failed owner leaves the view
            owner = self.membership.owner(agent.id)
            if owner.id == self.membership.me.id:
                break
            failure = await self._forward(scope, receive, send, body, owner, agent.id)
            if failure is None:
                return
            self.membership.suspect(owner.id, failure)
            self.hops.labels("rerouted").inc()
        await self.app(scope, inner, send)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, owner: Member, agent: str
    ) -> str | None:
        """Forward to ``owner``; the failure when it could not be reached before anything was sent (safe to
        re-route), else None (answered)."""
        method = scope["method"]
        query = _query(scope)
        client = scope.get("client")
        proof = hop.sign(
            self.fleet.secret,
            method,
            scope["path"],
            query,
            body,
            agent,
            self.membership.me.id,
            client[0] if client else "",
        )
        headers = [(k, v) for k, v in scope["headers"] if k not in _DROP_REQUEST]
        headers.append((hop.HEADER, proof.encode()))
        url = owner.url + scope["path"] + (f"?{query}" if query else "")
        timeout = httpx2.Timeout(
            None if method == "GET" else self.fleet.config.hop_timeout_s,
            connect=self.fleet.config.hop_connect_timeout_s,
        )
        request = self.fleet.client.build_request(method, url, headers=headers, content=body, timeout=timeout)
        try:
            response = await self.fleet.client.send(request, stream=True)
        except (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout) as exc:
            return type(exc).__name__
        except httpx2.HTTPError as exc:
            self.hops.labels("failed").inc()
            log.warning("fleet: hop to %s failed: %s", owner.id, type(exc).__name__)
            await jsonrpc_error(send, 502, INTERNAL_ERROR, "the replica serving this agent did not answer; retry")
            return None
        self.hops.labels("forwarded").inc()
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k.encode("latin-1"), v.encode("latin-1"))
                        for k, v in response.headers.multi_items()
                        if k.lower() not in _DROP_RESPONSE
                    ],
                }
            )
            async with anyio.create_task_group() as tg:

                async def disconnected() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(disconnected)
                try:
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except httpx2.HTTPError:
                    pass  # the owner went away mid-answer: end what was sent; the client sees a cut stream
                tg.cancel_scope.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()
        return None


def _query(scope: Scope) -> str:
    qs = scope.get("query_string", b"")
    return qs.decode("latin-1") if qs else ""
