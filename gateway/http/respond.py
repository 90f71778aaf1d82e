"""Small ASGI answers shared by the middlewares: a whole response, a JSON-RPC error with no request id."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from starlette.types import Send

Headers = Sequence[tuple[bytes, bytes]]
JSON = b"application/json"


async def respond(send: Send, status: int, body: bytes, ctype: bytes, headers: Headers = ()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def jsonrpc_error(send: Send, status: int, code: int, message: str, headers: Headers = ()) -> None:
    body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}})
    await respond(send, status, body, JSON, headers)
