"""A streamable-HTTP forwarder that does nothing else, on the gateway's own stack: uvicorn (httptools, uvloop)
serving a bare ASGI app, and one pooled aiohttp session to the upstream.

No authentication, no policy, no audit, no metrics, no parsing of the message: each POST (and DELETE) is sent on
as it came, with the MCP headers, and its answer is handed back whole. The benchmark puts it beside the gateway
in front of the same HTTP upstream. What it adds over a direct connection is what one more HTTP hop in Python
costs by itself: the part of a gateway's added latency and lost throughput that its own work cannot remove.

``bench/stack_bench.py`` runs the same app on other stacks, to see what a different server or client would buy:
``NULL_PROXY_CLIENT=pyreqwest`` (Rust's reqwest) in place of aiohttp, and granian (a Rust server) in place of
uvicorn, which imports ``null_proxy:app`` (upstream in ``NULL_PROXY_UPSTREAM``).

    python bench/null_proxy.py PORT UPSTREAM_URL
"""

from __future__ import annotations

import os
import sys
from typing import Any

from null_server import read_body  # its directory is first on sys.path: run as a script

FORWARDED = frozenset(
    {b"content-type", b"accept", b"mcp-protocol-version", b"mcp-session-id", b"mcp-method", b"mcp-name"}
)
"""The request headers a forwarder passes on (``bench/raw_proxy.py`` too)."""
RETURNED = (b"content-type", b"mcp-session-id")
"""The response headers it hands back."""
_RETURNED_NAMES = tuple(k.decode() for k in RETURNED)
CLIENTS = ("aiohttp", "pyreqwest")


class NullProxy:
    def __init__(self, upstream: str, client: str = "aiohttp") -> None:
        if client not in CLIENTS:
            raise ValueError(f"client must be one of {CLIENTS}")
        self.upstream = upstream
        self.client = client
        self.session: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["method"] not in ("POST", "DELETE"):  # no standalone GET stream: the client goes on without one
            await send({"type": "http.response.start", "status": 405, "headers": [(b"allow", b"POST, DELETE")]})
            await send({"type": "http.response.body", "body": b""})
            return
        body = await read_body(receive)
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in FORWARDED}
        if self.client == "aiohttp":
            async with self.session.request(scope["method"], self.upstream, data=body, headers=headers) as resp:
                out = await resp.read()
                status = resp.status
                back = [(k.encode(), resp.headers[k].encode()) for k in _RETURNED_NAMES if k in resp.headers]
        else:
            request = self.session.request(scope["method"], self.upstream).headers(headers).body_bytes(body)
            resp = await request.build().send()
            out = await resp.bytes()
            status = resp.status
            back = [(k.encode(), v.encode()) for k in _RETURNED_NAMES if (v := resp.get_header(k)) is not None]
        back.append((b"content-length", str(len(out)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": back})
        await send({"type": "http.response.body", "body": bytes(out)})

    def _open(self) -> None:
        if not self.upstream:
            raise ValueError("no upstream: give its URL as the second argument, or in NULL_PROXY_UPSTREAM")
        if self.client == "aiohttp":
            import aiohttp

            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        else:
            from pyreqwest.client import ClientBuilder

            self.session = ClientBuilder().max_connections(100).build()

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "lifespan.shutdown":
            self._open()
            await send({"type": "lifespan.startup.complete"})
        if self.session is not None:
            await self.session.close()
        await send({"type": "lifespan.shutdown.complete"})


app = NullProxy(os.environ.get("NULL_PROXY_UPSTREAM", ""), os.environ.get("NULL_PROXY_CLIENT", "aiohttp"))
"""For a server that imports its app by name (granian)."""

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/null_proxy.py PORT UPSTREAM_URL")
    import uvicorn

    uvicorn.run(
        NullProxy(sys.argv[2], os.environ.get("NULL_PROXY_CLIENT", "aiohttp")),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        loop="uvloop",
        http="httptools",
    )
