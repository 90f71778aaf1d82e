"""The agent's address, from a trusted reverse proxy's ``X-Forwarded-For``; from anyone else, the connection's.

uvicorn's own proxy-header handling is off (``gateway/http/server.py``): it trusts 127.0.0.1 by default, so any
local process could name any address, and that address is in the policy input (``input.request.remote_addr``)
and in every audit record, auth failures included. This stage runs only when ``[server] trusted_proxies`` is
set, and rewrites ``scope["client"]`` only for a connection from one of them: the address is the right-most
entry of ``X-Forwarded-For`` that is not itself a trusted proxy (entries further left are whatever the agent
sent). A malformed entry ends the walk at the last proxy trusted so far.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.http.headers import headers_of

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ForwardedFor:
    def __init__(self, app: ASGIApp, trusted: Iterable[str]):
        self.app = app
        self._trusted: tuple[_Network, ...] = tuple(ipaddress.ip_network(t, strict=False) for t in trusted)
        if not self._trusted:
            raise ValueError("ForwardedFor needs at least one trusted proxy (use wrap)")

    @classmethod
    def wrap(cls, app: ASGIApp, trusted: list[str]) -> ASGIApp:
        """The stage in front of ``app`` when proxies are trusted; else ``app`` itself (nothing to do per request)."""
        return cls(app, trusted) if trusted else app

    def _is_trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self._trusted)

    def client_of(self, peer: str, forwarded_for: str | None) -> str:
        if forwarded_for is None or not self._is_trusted(peer):
            return peer
        client = peer
        for entry in reversed(forwarded_for.split(",")):
            host = entry.strip()
            try:
                ipaddress.ip_address(host)
            except ValueError:
                return client  # not an address: stop at the nearest proxy trusted so far
            client = host
            if not self._is_trusted(host):
                return host
        return client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get("client")
        if scope["type"] == "http" and peer:
            client = self.client_of(peer[0], headers_of(scope).forwarded_for)
            if client != peer[0]:
                scope["client"] = (client, 0)
        await self.app(scope, receive, send)
