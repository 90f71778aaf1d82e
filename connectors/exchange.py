"""One HTTP request and its streamed response, for the HTTP upstream connector, on one of two clients.

``AiohttpExchange`` is the default: aiohttp's client (its C parser, headers and body in one write) costs about a
millisecond less per request than httpx2's on this 2-core machine. Measured against the SDK's echo server
over a 2025-era session (SSE answers), p50 per ``tools/call``: a raw socket 1.95 ms, aiohttp 2.28 ms, httpx2
4.31 ms. ``Httpx2Exchange`` stays for upstreams with ``oauth``: the SDK's OAuth provider is an ``httpx2.Auth``
flow. Both give the connector the same small response shape, and one SSE parser reads both.

A transport failure of either client is raised as ``ExchangeError``, so the connector has one error to map.
"""

from __future__ import annotations

import codecs
import logging
import os
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpcore2
import httpx2
from httpx2._sse import _SSEParser  # the parser EventSource uses (bounded events); pinned, see pyproject.toml

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("gateway.upstream")


def _import_aiohttp() -> Any:
    """aiohttp, imported on first use: it costs about 19 MB resident, which only a gateway with an HTTP upstream
    pays. Its frozenlist is C++ built against another libstdc++ and corrupts rego-cpp's heap when loaded first
    (gateway/policy/opa.py); rego-cpp may load after it (``engine = "regopy"`` at a reload), so frozenlist's
    pure-Python form is used unless it is already loaded (it only holds aiohttp's signal lists)."""
    if "frozenlist" not in sys.modules:
        os.environ.setdefault("FROZENLIST_NO_EXTENSIONS", "1")
    import aiohttp

    return aiohttp


class ExchangeError(Exception):
    """The request could not be sent or its response read (connection refused, reset, closed)."""


class EventTooLarge(Exception):
    """An SSE event grew past the size limit (its unfinished line included)."""


@dataclass(frozen=True)
class Event:
    data: str
    id: str
    retry: int | None


class Response(Protocol):
    status: int

    def header(self, name: str) -> str: ...

    def chunks(self) -> AsyncIterator[bytes]: ...


class Exchange(Protocol):
    def open(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> AbstractAsyncContextManager[Response]: ...

    async def aclose(self) -> None: ...


async def sse_events(resp: Response, max_event_size: int) -> AsyncGenerator[Event, None]:
    """The events of an SSE body, each bounded by ``max_event_size`` (EventTooLarge as soon as one grows past)."""
    parser = _SSEParser(max_event_size)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    try:
        async for chunk in resp.chunks():
            for event in parser.decode(decoder.decode(chunk)):
                yield Event(event.data, event.id, event.retry)
        for event in parser.decode(decoder.decode(b"", final=True)):
            yield Event(event.data, event.id, event.retry)
        for event in parser.flush():
            yield Event(event.data, event.id, event.retry)
    except httpx2.SSEError:
        raise EventTooLarge from None


class _Response:
    """Either client's streamed response in the shape the connector reads; a transport error while reading the
    body (one of ``errors``) is an ExchangeError."""

    __slots__ = ("_body", "_errors", "_headers", "status")

    def __init__(
        self, status: int, headers: Mapping[str, str], body: AsyncIterator[bytes], errors: tuple[type[Exception], ...]
    ):
        self.status = status
        self._headers = headers
        self._body = body
        self._errors = errors

    def header(self, name: str) -> str:
        return self._headers.get(name, "")

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._body:
                yield chunk
        except self._errors as exc:
            raise ExchangeError(exc.__class__.__name__) from None


class AiohttpExchange:
    """A pooled keep-alive aiohttp session. Created on first use: aiohttp binds it to the running loop."""

    def __init__(self, url: str, connect_timeout: float = 5.0):
        self._connect_timeout = connect_timeout
        self._errors: tuple[type[Exception], ...] = (OSError,)
        self._session: aiohttp.ClientSession | None = None
        self._proxy = env_proxy(url)
        self.connects = 0
        """New connections opened (a kept-alive pool opens one and reuses it)."""

    def _open_session(self) -> aiohttp.ClientSession:
        aiohttp = _import_aiohttp()
        self._errors = (aiohttp.ClientError, OSError, TimeoutError)
        trace = aiohttp.TraceConfig()

        async def counted(*_: Any) -> None:
            self.connects += 1

        trace.on_connection_create_end.append(counted)
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout),
            trust_env=False,  # read per request in a thread (two hops a call): the proxy is read once, above
            auto_decompress=True,
            trace_configs=[trace],
            connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=10),
        )

    @asynccontextmanager
    async def open(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> AsyncIterator[Response]:
        if self._session is None:
            self._session = self._open_session()
        try:
            cm = self._session.request(
                method, url, data=body, headers=dict(headers), allow_redirects=False, proxy=self._proxy
            )
            resp = await cm.__aenter__()
        except self._errors as exc:
            raise ExchangeError(exc.__class__.__name__) from None
        try:
            yield _Response(resp.status, resp.headers, resp.content.iter_any(), self._errors)
        finally:
            await cm.__aexit__(None, None, None)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTP_PROXY``/``HTTPS_PROXY``, ``NO_PROXY``), as httpx2
    honoured them; read once per upstream."""
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme)
    if not proxy or (parts.hostname and urllib.request.proxy_bypass(parts.hostname)):
        return None
    return proxy


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
