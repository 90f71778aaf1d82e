"""Cancel a request's work when its client hangs up, with a plain task rather than a task group.

A task group would cost its set-up per request (and, for a stream, hold it for the stream's whole life) and a loop
turn at its exit waiting for the watcher to end. The caller cancels the watcher before it leaves ``scope``, so
the watcher can never cancel anything but that request's work.
"""

from __future__ import annotations

import asyncio

import anyio
from starlette.types import Receive


def watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> asyncio.Task[None]:
    """A task that cancels ``scope`` once the client is gone. It ends by itself only then: ``hung_up`` tells."""
    return asyncio.get_running_loop().create_task(_cancel_on_disconnect(receive, scope))


def hung_up(watcher: asyncio.Task[None]) -> bool:
    """Whether the client went away (the watcher ended by itself, rather than being cancelled)."""
    return watcher.done() and not watcher.cancelled()


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
    except Exception:  # a connection that cannot be read from is gone too (nobody awaits this task's errors)
        pass
    scope.cancel()
