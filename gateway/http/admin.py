"""The admin listener: ``/metrics``, ``/readyz`` and ``/healthz``, on their own address (``[server] admin_listen``).

They name every agent, team and tool, so they are never served on the port agents use. Default loopback;
put it behind whatever guards your scrapers' network.
"""

from __future__ import annotations

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

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
            await respond(send, 200 if ok else 503, orjson.dumps(detail), b"application/json")
        elif path == "/healthz":
            await respond(send, 200, b'{"status":"ok"}', b"application/json")
        else:
            await respond(send, 404, b'{"error":"not found"}', b"application/json")
