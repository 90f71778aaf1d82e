"""The gateway's lifecycle under the agent listener: start and stop it with the ASGI lifespan, drain on exit.

A failure after start-up (the gateway's task group ends with an error: a watcher or a session manager crashed)
leaves no half-alive gateway: it is logged, ``Gateway.failure`` is set (``/healthz`` then answers 503), the
lifespan reports ``lifespan.shutdown.failed`` (``startup.failed`` is no longer a valid transition once start-up
completed), and the server is told to stop; ``serve`` then exits non-zero so a supervisor restarts it.

Graceful shutdown: calls in flight finish (and are recorded) before the SDK's SSE streams are closed. By default
sse-starlette ends every SSE stream the moment the server is told to stop, cutting calls that answer on a
stream; here the streams stay up while any MCP request other than a GET is in flight (bounded by the server's
own graceful-shutdown timeout), then are closed so idle listening streams do not hold the shutdown up.
"""

from __future__ import annotations

import gc
import logging

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import sdk_adapter
from gateway.memory import release_free_memory
from gateway.service import Gateway

log = logging.getLogger("gateway.http")


class Lifespan:
    def __init__(self, app: ASGIApp, gateway: Gateway):
        self.app = app
        self.gw = gateway
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "http" and scope["method"] != "GET" and scope["path"].startswith("/mcp"):
            self.in_flight += 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.in_flight -= 1
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        msg = await receive()
        assert msg["type"] == "lifespan.startup"
        started = False
        try:
            async with self.gw.running(), anyio.create_task_group() as tg:
                tg.start_soon(self._drain_on_exit)
                await send({"type": "lifespan.startup.complete"})
                started = True
                freeze_startup_objects()
                msg = await receive()
                # lifespan.shutdown: leaving the block stops upstreams and session managers
                tg.cancel_scope.cancel()
        except Exception as exc:
            if not started:
                log.exception("gateway failed to start")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            log.critical("gateway failed after start; stopping so that a supervisor restarts it", exc_info=exc)
            self.gw.fail(f"{type(exc).__name__} after start")
            await send({"type": "lifespan.shutdown.failed", "message": "the gateway failed after start"})
            return
        await send({"type": "lifespan.shutdown.complete"})

    async def _drain_on_exit(self) -> None:
        sdk_adapter.keep_sse_streams_on_exit()
        while not sdk_adapter.server_exiting():
            await anyio.sleep(0.05)
        log.info("shutting down: %d requests in flight", self.in_flight)
        while self.in_flight:
            await anyio.sleep(0.05)
        await anyio.sleep(0.5)  # let clients take in their last answers before their listening streams go
        sdk_adapter.close_sse_streams()


def freeze_startup_objects() -> None:
    """Move what start-up built (modules, models, the compiled policy: about 100,000 objects) out of
    the collector's reach. Every full collection walked them all, about 3 ms on this machine and some 25 times per
    300 calls, landing on whichever call was running; frozen, a collection walks only what calls create.
    What start-up freed (the policy compiler's syntax trees) goes back to the system first."""
    release_free_memory()
    gc.freeze()
