"""Serve the agent listener and the admin listener in one process and one event loop.

Both sockets are bound before anything starts, so a taken port is a clear start-up error rather than a
half-started gateway. The agent listener's uvicorn server owns the lifecycle (lifespan, signals); the admin
server stops when it does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

from gateway.config import ServerConfig
from gateway.sdk_adapter import QuietServer, guarded_protocol

log = logging.getLogger("gateway.http")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (IPv6 when the host is an IPv6 address); OSError when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and accepted
    # connections inherit it. Without it every answer written in two parts (head, body) waited out the client's
    # delayed ACK (about 40 ms a call); set on the listener too, for the same reason.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


ACCEPT_BURST = 128
"""The listen backlog, which is also how many connections asyncio accepts in one go before it closes the ones past
``max_connections``: a burst of new connections takes at most this many descriptors for a moment."""
FD_RESERVE = 128 + ACCEPT_BURST
"""Descriptors kept for everything but agent connections (upstream pipes and sockets, the audit log, workers,
an accept burst), at least: a quarter of the limit when that is more, on top of what is already open at start."""


def connection_budget(wanted: int) -> int:
    """``max_connections``, within what the process may open: the soft descriptor limit is raised to the hard
    one, and agent connections never take the descriptors kept for the rest (a flood of connections must not
    leave the gateway unable to accept, start an upstream or write its audit log)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 64
    budget = max(1, soft - max(FD_RESERVE, soft // 4) - open_now)
    if wanted > budget:
        log.warning(
            "server.max_connections = %d exceeds what %d descriptors allow: %d connections at most",
            wanted,
            soft,
            budget,
        )
        return budget
    return wanted


def serve(
    agent_app: ASGIApp,
    admin_app: ASGIApp,
    server: ServerConfig,
    log_level: str,
    agent_sock: socket.socket,
    admin_sock: socket.socket,
    on_refused: Callable[[str], None],
    failed: Callable[[], bool] = lambda: False,
    loop: Literal["uvloop", "asyncio"] = "asyncio",
) -> None:
    """Run until told to stop (SIGTERM/SIGINT), or until ``failed()`` (the gateway died after start: the caller
    exits non-zero). The agent port's connections are bounded in number (``max_connections``) and in the time
    to send a request head (``header_timeout_s``), with either HTTP parser (``server.http``)."""
    # proxy_headers off: uvicorn would take X-Forwarded-For from any local process (gateway/http/clientaddr.py).
    common = {"log_level": log_level, "log_config": None, "access_log": False, "proxy_headers": False}
    budget = connection_budget(server.max_connections)
    protocol = guarded_protocol(server.http_parser, budget, server.header_timeout_s, on_refused)
    log.info("event loop %s, HTTP parser %s", loop, server.http_parser)
    agent = uvicorn.Server(
        uvicorn.Config(
            agent_app,
            lifespan="on",
            timeout_graceful_shutdown=10,
            http=protocol,
            backlog=ACCEPT_BURST,
            **common,  # type: ignore[arg-type]
        )
    )
    admin = QuietServer(uvicorn.Config(admin_app, lifespan="off", **common))  # type: ignore[arg-type]

    async def stop_on_failure() -> None:
        while not failed():
            await asyncio.sleep(0.1)  # uvicorn's own main loop ticks at this pace too
        agent.should_exit = True

    async def both() -> None:
        admin_task = asyncio.create_task(admin.serve(sockets=[admin_sock]))
        watch = asyncio.create_task(stop_on_failure())
        try:
            await agent.serve(sockets=[agent_sock])
        finally:
            watch.cancel()
            admin.should_exit = True
            await admin_task

    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(both())
