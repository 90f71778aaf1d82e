"""The thinnest streamable-HTTP forwarder Python can be: uvloop protocols and httptools parsers on both sides, no
ASGI server, no HTTP client library, no checks of any kind. A measuring device for the benchmark, never a product
path: it trusts its client and its upstream (loopback only, one request at a time per connection).

Each POST (and DELETE) goes on to the upstream over a pooled keep-alive connection with the MCP headers; its
answer comes back whole. What it adds over a direct connection is what one more HTTP hop costs in Python on this
machine before any work is done: the floor under both ``bench/null_proxy.py`` (the same hop on the gateway's
stack) and the gateway.

    python bench/raw_proxy.py PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httptools
import uvloop
from null_proxy import FORWARDED, RETURNED  # its directory is first on sys.path: run as a script


class _Messages(asyncio.Protocol):
    """One connection's messages, parsed by httptools: the headers named in ``keep``, and the body whole."""

    keep: frozenset[bytes] = frozenset()

    def __init__(self, parser: type[httptools.HttpRequestParser | httptools.HttpResponseParser]) -> None:
        self.parser = parser(self)
        self.transport: Any = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio.Transport subclasses
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers, self.body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in self.keep:
            self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)


class _Upstream(_Messages):
    """One keep-alive connection to the upstream; at most one request in flight on it."""

    keep = frozenset(RETURNED)

    def __init__(self) -> None:
        super().__init__(httptools.HttpResponseParser)
        self.answer: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None
        self.closed = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError("the upstream closed the connection"))

    def on_message_complete(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((self.parser.get_status_code(), self.headers, b"".join(self.body)))


class _Pool:
    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[_Upstream] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def request(self, method: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, list, bytes]:
        try:
            return await self._once(method, headers, body)
        except ConnectionError:  # a pooled connection the upstream closed meanwhile: once more, on a new one
            return await self._once(method, headers, body)

    async def _once(self, method: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, list, bytes]:
        while self.idle and self.idle[-1].closed:
            self.idle.pop()
        loop = asyncio.get_running_loop()
        if self.idle:
            up = self.idle.pop()
        else:
            _, up = await loop.create_connection(_Upstream, "127.0.0.1", self.port)
        up.answer = loop.create_future()
        head = f"{method} /mcp HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\ncontent-length: {len(body)}\r\n".encode()
        up.transport.write(head + _lines(headers) + body)
        answer = await up.answer
        if not up.closed:
            self.idle.append(up)
        return answer


class _Front(_Messages):
    """One agent-side connection."""

    keep = FORWARDED

    def __init__(self, pool: _Pool) -> None:
        super().__init__(httptools.HttpRequestParser)
        self.pool = pool

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        if method not in (b"POST", b"DELETE"):  # no standalone GET stream: the client goes on without one
            self.transport.write(b"HTTP/1.1 405 Method Not Allowed\r\nallow: POST, DELETE\r\ncontent-length: 0\r\n\r\n")
            return
        task = asyncio.ensure_future(self._forward(method.decode(), self.headers, b"".join(self.body)))
        self.pool.tasks.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(self.pool.tasks.discard)

    async def _forward(self, method: str, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        status, back, out = await self.pool.request(method, headers, body)
        head = f"HTTP/1.1 {status} -\r\ncontent-length: {len(out)}\r\n".encode()
        if not self.transport.is_closing():
            self.transport.write(head + _lines(back) + out)


def _lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    """Header lines and the blank line that ends a message's head."""
    return b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"


async def _serve(port: int, upstream_port: int) -> None:
    pool = _Pool(upstream_port)
    server = await asyncio.get_running_loop().create_server(lambda: _Front(pool), "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/raw_proxy.py PORT UPSTREAM_PORT")
    uvloop.run(_serve(int(sys.argv[1]), int(sys.argv[2])))
