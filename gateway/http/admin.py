"""The admin listener: ``/metrics``, ``/readyz`` and ``/healthz``, on their own address (``[server] admin_listen``).

They name every agent, team and tool, so they are never served on the port agents use. Default loopback;
put it behind whatever guards your scrapers' network. On loopback the Host header is checked too, so a web page
in a browser on the same machine cannot read them through DNS rebinding.
"""

from __future__ import annotations

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import stages
from gateway.http.headers import ParseHeaders
from gateway.http.health import health
from gateway.http.hostorigin import HostOrigin, is_loopback, loopback_hosts
from gateway.http.respond import respond
from gateway.service import Gateway


class AdminApp:
    def __init__(self, gateway: Gateway):
        self.gw = gateway
        self._metrics_type = CONTENT_TYPE_LATEST.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan here: the agent listener's app owns the gateway's lifecycle
        path = scope["path"]
        if path == "/metrics":
            await respond(send, 200, generate_latest(self.gw.metrics.registry), self._metrics_type)
        elif path == "/readyz":
            ok, detail = self.gw.readiness()
            if self.gw.integrity.lock is not None:  # the tool lock: items drifted now, per server
                detail["integrity"] = self.gw.integrity.report()
            if self.gw.bundles is not None:  # [policy] bundle_url: not ready until a bundle (or the fallback) serves
                detail["policy_bundle"] = self.gw.bundles.report()
                ok = detail["ready"] = ok and self.gw.bundles.ready
            if self.gw.shipper is not None:  # [decision_logs]: shown, never a reason to take traffic away
                detail["decision_logs"] = self.gw.shipper.report()
            await respond(send, 200 if ok else 503, orjson.dumps(detail), b"application/json")
        elif path == "/healthz":
            await health(send, self.gw)
        elif path == "/debug/stages" and stages.ENABLED:  # MCP_GATEWAY_STAGES=1 only (gateway/stages.py)
            reset = scope.get("query_string", b"") == b"reset=1"
            await respond(send, 200, orjson.dumps(stages.summary(reset)), b"application/json")
        else:
            await respond(send, 404, b'{"error":"not found"}', b"application/json")


def build_admin_app(gw: Gateway) -> ASGIApp:
    server = gw.config.server
    app: ASGIApp = AdminApp(gw)
    if is_loopback(server.admin_host):
        app = HostOrigin(app, loopback_hosts(server.admin_port))
    return ParseHeaders(app)
