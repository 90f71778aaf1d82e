"""DNS-rebinding protection: the ``Host`` and ``Origin`` a request names must be ones the gateway answers to."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.http.headers import headers_of
from gateway.http.respond import respond

log = logging.getLogger("gateway.http")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_hosts(port: int) -> set[str]:
    return {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")} | {"127.0.0.1", "localhost"}


def default_hosts(host: str, port: int) -> set[str]:
    """Bound to loopback: its names with and without the port. Routable without a list: none (not checked)."""
    if is_loopback(host):
        return loopback_hosts(port)
    log.warning("server.allowed_hosts is not set and the gateway listens on %s: Host headers are not checked", host)
    return set()


class HostOrigin:
    """421 for a Host not in ``hosts``, 403 for an Origin not in ``origins``; no check when ``hosts`` is empty."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str], origins: Iterable[str] | None = None):
        self.app = app
        self.hosts = frozenset(h.lower() for h in hosts)
        if origins is None:
            origins = [f"{scheme}://{h}" for h in self.hosts for scheme in ("http", "https")]
        self.origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hosts and scope["type"] == "http":
            headers = headers_of(scope)
            if (headers.host or "").lower() not in self.hosts:
                await respond(send, 421, b"Invalid Host header", b"text/plain")
                return
            if headers.origin is not None and headers.origin not in self.origins:
                await respond(send, 403, b"Invalid Origin header", b"text/plain")
                return
        await self.app(scope, receive, send)
