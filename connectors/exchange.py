"""One HTTP request and its streamed response, for the HTTP upstream connector, on one of two clients.

``AiohttpExchange`` is the default: aiohttp's client (its C parser, headers and body in one write) costs about a
millisecond less per request than httpx2's on this 2-core machine. Measured against the SDK's echo server
over a 2025-era session (SSE answers), p50 per ``tools/call``: a raw socket 1.95 ms, aiohttp 2.28 ms, httpx2
4.31 ms. ``Httpx2Exchange`` stays for upstreams with ``oauth``: the SDK's OAuth provider is an ``httpx2.Auth``
flow (``connectors/httpx2_exchange.py``, imported only then). Both give the connector the same small response
shape, and one SSE parser reads both.

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

from httpx2._sse import SSEError, _SSEParser  # the parser EventSource uses (bounded events); pinned, see pyproject.toml

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
    except SSEError:
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

    def _open_session(self) -> aiohttp.ClientSession:
        aiohttp = _import_aiohttp()
        self._errors = (aiohttp.ClientError, OSError, TimeoutError)
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout),
            trust_env=False,  # read per request in a thread (two hops a call): the proxy is read once, above
            auto_decompress=True,
            # No trace_configs: with any, aiohttp sends each of its request signals through a coroutine, every
            # request (10-40 us a call here). tests/test_http_upstream_sends.py counts connections at the loop.
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
