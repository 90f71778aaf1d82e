"""The agent listener's ASGI app: the request chain, assembled once from the configuration.

Each stage is a small ASGI middleware with one job, configured in its ``__init__``; an MCP request passes them in
this order (see docs/architecture.md):

    ParseHeaders -> ForwardedFor ([server] trusted_proxies) -> Lifespan (drain accounting) -> Router
        /mcp, /mcp/<upstream>: HostOrigin -> BodyLimit -> Authenticate -> FleetRoute ([fleet]) -> ViewGate
                               -> AgentConcurrency -> SessionBinding
                               -> Dispatch (fast path or the SDK's transport)
        /healthz, /.well-known/oauth-protected-resource[/...]: answered by the router

``/metrics`` and ``/readyz`` are not here: they are on the admin listener (``gateway/http/admin.py``).
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import sdk_adapter, tracing
from gateway.fastpath import FastPath
from gateway.http.authenticate import WELL_KNOWN, Authenticate
from gateway.http.bodylimit import BodyLimit
from gateway.http.clientaddr import ForwardedFor
from gateway.http.dispatch import VIEW_KEY, Dispatch
from gateway.http.fleetroute import FleetRoute
from gateway.http.headers import ParseHeaders
from gateway.http.health import health
from gateway.http.hostorigin import HostOrigin, default_hosts
from gateway.http.lifespan import Lifespan
from gateway.http.limits import AgentConcurrency
from gateway.http.respond import JSON, respond
from gateway.http.sessionlimits import SessionLimits
from gateway.http.sessions import SessionBinding
from gateway.http.viewgate import ViewGate
from gateway.service import Gateway


class Router:
    """``/mcp`` and ``/mcp/<upstream>`` go down the MCP chain (with the view named); a few fixed paths; 404."""

    def __init__(self, mcp: ASGIApp, views: set[str | None], gateway: Gateway, public_url: str):
        self.mcp = mcp
        self.views = views
        self.gw = gateway
        self.public = public_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/mcp":
            scope["state"][VIEW_KEY] = None
            await self.mcp(scope, receive, send)
        elif path.startswith("/mcp/"):
            # An unknown upstream is answered by ViewGate after authentication, as a hidden one is.
            scope["state"][VIEW_KEY] = path[5:].rstrip("/")
            await self.mcp(scope, receive, send)
        elif path == "/healthz":
            await health(send, self.gw)
        elif path == WELL_KNOWN or path.startswith(WELL_KNOWN + "/"):
            await self._resource_metadata(send, path)
        else:
            await respond(send, 404, b'{"error":"not found"}', JSON)

    async def _resource_metadata(self, send: Send, path: str) -> None:
        issuer = self.gw.auth.jwt_issuer
        if issuer is None:
            await respond(send, 404, b'{"error":"no identity provider is configured"}', JSON)
            return
        doc = {
            "resource": self.public + (path[len(WELL_KNOWN) :] or "/mcp"),
            "authorization_servers": [issuer],
            "bearer_methods_supported": ["header"],
            "resource_name": "MCP containment gateway",
        }
        await respond(send, 200, orjson.dumps(doc), JSON)


def build_agent_app(gw: Gateway) -> ASGIApp:
    server = gw.config.server
    metrics = gw.metrics
    public = (server.public_url or f"http://{server.listen}").rstrip("/")
    managers = gw.session_managers

    def limited(limit: str) -> None:
        metrics.limited.labels(limit).inc()

    def live_ids() -> set[str]:
        live: set[str] = set()
        for manager in managers.values():
            live.update(sdk_adapter.live_session_ids(manager))
        return live

    dispatch = Dispatch(FastPath(gw.pipeline, managers), {view: m.handle_request for view, m in managers.items()})
    sessions = SessionBinding(
        dispatch,
        live_ids,
        server.max_sessions_per_agent,
        limited,
        lambda sid: sdk_adapter.holds_session(managers.values(), sid),
    )
    metrics.sessions.set_function(lambda: len(live_ids()))
    chain: ASGIApp = SessionLimits.wrap(sessions, gw, sessions)  # [[limits]] sessions: 429 at initialize
    chain = AgentConcurrency(chain, server.max_concurrent_calls_per_agent, limited)
    chain = ViewGate(chain, set(managers), gw.pipeline)
    chain = FleetRoute.wrap(chain, gw)  # [fleet]: another live replica's agent goes there in one hop
    chain = Authenticate(chain, gw.auth, metrics, gw.recorder, f"{public}{WELL_KNOWN}/mcp")
    chain = BodyLimit(chain, server.max_request_bytes)
    hosts = set(server.allowed_hosts) if server.allowed_hosts is not None else default_hosts(server.host, server.port)
    if hosts:  # bound to a routable address without allowed_hosts: Host is not checked (logged at start)
        chain = HostOrigin(chain, hosts, server.allowed_origins)
    if tracing.enabled():
        chain = tracing.TracingMiddleware(chain)
    router = Router(chain, set(managers), gw, public)
    return ParseHeaders(ForwardedFor.wrap(Lifespan(router, gw), server.trusted_proxies))
