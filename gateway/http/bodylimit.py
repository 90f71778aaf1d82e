"""The request-body limit (``[server] max_request_bytes``): 413 with a JSON-RPC error naming it.

A declared ``Content-Length`` past the limit is refused at once; a body without one (chunked) is counted as it
is read, by whichever stage reads it, and refused the moment it grows past the limit. Nothing is buffered here:
the body is read after authentication, so an unauthenticated client cannot make the gateway hold it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import INVALID_REQUEST
from gateway.http.headers import headers_of
from gateway.http.respond import jsonrpc_error


class BodyTooLarge(Exception):
    """Raised by the bounded ``receive`` when the body grows past the limit."""


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int):
        if limit <= 0:
            raise ValueError("max_request_bytes must be positive")
        self.app = app
        self.limit = limit
        self.message = f"request body exceeds the limit of {limit} bytes (server.max_request_bytes)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = headers_of(scope).content_length
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await jsonrpc_error(send, 413, INVALID_REQUEST, self.message)
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        size = 0
        limit = self.limit

        async def bounded() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, bounded, send)
        except BodyTooLarge:
            # Raised while the body is read (sessions.py reads it whole, before anything answers): no response
            # has started yet.
            await jsonrpc_error(send, 413, INVALID_REQUEST, self.message)


async def read_body(receive: Receive) -> bytes:
    """The whole request body (bounded by ``BodyLimit`` when it wraps ``receive``)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body already read, then whatever the connection says next (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
