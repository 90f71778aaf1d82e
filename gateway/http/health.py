"""``/healthz``: liveness. A gateway whose task group is gone (it failed after start) is not alive, even though
its listeners still answer for the moment before the process exits."""

from __future__ import annotations

from starlette.types import Send

from gateway.http.respond import JSON, respond
from gateway.service import Gateway


async def health(send: Send, gw: Gateway) -> None:
    if gw.failure is not None:
        await respond(send, 503, b'{"status":"failed"}', JSON)
    else:
        await respond(send, 200, b'{"status":"ok"}', JSON)
