"""What the gateway needs from an upstream connection, whatever carries it.

Every transport (stdio child process, streamable HTTP, the built-in and the contained tools) stands behind the
same small interface, so the catalog, the forward stage and the relay never ask which one they hold. Adding a
transport is one new module implementing :class:`Connector`.

Two levels, because contained upstreams serve each agent from its own worker:

- :class:`CallTarget` is what one request goes to (``request``, and a ``name`` for errors);
- :class:`Connector` is the upstream as the catalog holds it: lifecycle (``start``, ``wait_ready``, ``aclose``),
  health (``up``, ``last_error``), what the server declared (``capabilities``, ``server_info``), and the way
  the upstream's own messages come back (``on_notification``, ``on_request``);
- :class:`PerAgent` is the one extra a connector implements when each agent gets its own connection (contained
  and built-in upstreams): ``connector_for`` picks it.

The layering is one-way: ``connectors`` imports nothing from ``gateway``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import anyio.abc

from connectors.process import spawn

ProgressFn = Callable[[dict[str, Any]], Awaitable[None]]
"""Receives the params of each notifications/progress of a request."""
NotificationFn = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Receives (method, params) of each notification the upstream sends outside a request's progress."""
RequestFn = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""Answers a server-to-client request (method, params) with its result, or raises RemoteError."""
StateFn = Callable[[Any, bool], None]
"""Told (connector, up) whenever the upstream comes up or goes down."""


class CallTarget(Protocol):
    """Where one request goes: the upstream's shared connection, a per-session one, or an agent's own worker."""

    name: str

    async def request(
        self, method: str, params: dict[str, Any] | None, timeout: float, on_progress: ProgressFn | None = None
    ) -> dict[str, Any]:
        """The result object of ``method``; raises UpstreamError (no answer) or RemoteError (a JSON-RPC error)."""
        ...


class Connector(CallTarget, Protocol):
    """An upstream as the catalog holds it."""

    capabilities: dict[str, Any]
    """What the server declared at initialize (empty until it is up)."""
    server_info: dict[str, Any]
    last_error: str
    """Why it is not up (empty when it is): shown by /readyz, never to agents."""
    client_capabilities: dict[str, Any]
    """What the gateway declares to the server as its client (roots, sampling, elicitation) at initialize."""
    on_notification: NotificationFn | None
    on_request: RequestFn | None

    @property
    def up(self) -> bool: ...

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Start connecting in the background (never raises: an upstream that is down is reported, not fatal)."""
        ...

    async def wait_ready(self, timeout: float) -> bool: ...

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class PerAgent(Protocol):
    """A connector whose calls each go to the calling agent's own connection (contained and built-in tools)."""

    def connector_for(self, agent: Any, session_id: str | None) -> CallTarget: ...


DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""One message from an upstream (a JSON body, an SSE event, a stdio line), by default."""


@dataclass(frozen=True)
class Limits:
    """What one upstream may make the gateway hold or do, enforced while reading (never buffered past)."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """A JSON body, an SSE event (with its unfinished line) or a stdio line longer than this fails the request
    it answers with an ``oversize`` error, and the stream it came on is cut."""
    max_server_requests: int = 16
    """Server-to-client requests (sampling, elicitation, roots, ping) of one upstream session answered at once."""


async def open_piped(argv: list[str], env: dict[str, str] | None, cwd: str | None, **extra: Any) -> anyio.abc.Process:
    """A child with its stdio on pipes, in its own session (a kill reaches all it starts): every upstream process
    and worker the gateway starts, the same way on asyncio's loop and on uvloop (``connectors/process.py``)."""
    return await spawn(argv, env, cwd, **extra)
