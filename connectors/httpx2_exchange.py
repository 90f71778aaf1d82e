"""httpx2's client for an HTTP upstream whose requests go through an ``httpx2.Auth`` flow (``oauth``: the SDK's
OAuth provider is one). A module of its own so that a gateway without such an upstream never imports httpx2's
client, its transports and httpcore2 (~3 MB resident)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpcore2
import httpx2

from connectors.exchange import ExchangeError, Response, _Response

log = logging.getLogger("gateway.upstream")


class Httpx2Exchange:
    """httpx2, for an upstream whose requests go through an ``httpx2.Auth`` flow (OAuth)."""

    def __init__(self, auth: httpx2.Auth | None = None, connect_timeout: float = 5.0):
        self.client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(None, connect=connect_timeout), follow_redirects=False, auth=auth
        )
        self.coalescing = coalesce_writes(self.client)

    @asynccontextmanager
    async def open(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> AsyncIterator[Response]:
        try:
            cm = self.client.stream(method, url, content=body, headers=headers)
            resp = await cm.__aenter__()
        except httpx2.TransportError as exc:
            raise ExchangeError(exc.__class__.__name__) from None
        try:
            yield _Response(resp.status_code, resp.headers, resp.aiter_bytes(), (httpx2.TransportError,))
        finally:
            await cm.__aexit__(None, None, None)

    async def aclose(self) -> None:
        await self.client.aclose()


def coalesce_writes(client: httpx2.AsyncClient) -> bool:
    """Make the client's connection pool hold each request's writes until it reads (one send per request).

    httpcore writes a request's head and body as two sends, and each wakes the server. A reach into httpx2's
    transport (``_transport._pool._network_backend``): when its shape is not the one known, the client is left
    as it is and False is returned.
    """
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(backend, httpcore2.AsyncNetworkBackend):
        log.debug("httpx2's connection pool is not the one known: request writes are not coalesced")
        return False
    if not isinstance(backend, _CoalescingBackend):
        pool._network_backend = _CoalescingBackend(backend)  # type: ignore[union-attr]
    return True


class _CoalescingBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self, inner: httpcore2.AsyncNetworkBackend):
        self._inner = inner
        self.sends = 0
        """Sends made on this pool's connections (one per request)."""
        self.connects = 0

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore2.AsyncNetworkStream:
        self.connects += 1
        return _Coalescing(await self._inner.connect_tcp(*args, **kwargs), self)

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore2.AsyncNetworkStream:
        return _Coalescing(await self._inner.connect_unix_socket(*args, **kwargs), self)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _Coalescing(httpcore2.AsyncNetworkStream):
    """A connection whose writes wait for the next read (or TLS start): an HTTP/1.1 client always reads after it
    has written a request, so the request's head, body and end leave together. A write error surfaces at that
    read, as the transport error it is."""

    def __init__(self, inner: httpcore2.AsyncNetworkStream, backend: _CoalescingBackend):
        self._inner = inner
        self._backend = backend
        self._held: list[bytes] = []
        self._timeout: float | None = None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            self._held.append(bytes(buffer))
            self._timeout = timeout

    async def _flush(self) -> None:
        if self._held:
            data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
            self._held.clear()
            self._backend.sends += 1
            await self._inner.write(data, self._timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        await self._flush()
        return await self._inner.read(max_bytes, timeout)

    async def aclose(self) -> None:
        self._held.clear()
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.AsyncNetworkStream:
        await self._flush()
        return _Coalescing(await self._inner.start_tls(ssl_context, server_hostname, timeout), self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
