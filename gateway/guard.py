"""A task group for the upstreams' background work in which one failing task cannot stop the gateway.

Upstream connectors, the containment runtime and the catalog start their background tasks (supervisors, list
fetches, workers) in the gateway's task group. An exception escaping any of them would cancel that group: the
session managers stop, and every later request fails while ``/healthz`` still answers. Here such a task is
logged and ends alone; what it served shows as down in ``/readyz`` (its connector keeps the reason).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

log = logging.getLogger("gateway")


class _Status:
    """Passes ``started`` through and remembers it: a failure before it belongs to the caller of ``start``."""

    def __init__(self, inner: anyio.abc.TaskStatus[Any]):
        self.inner = inner
        self.was_started = False

    def started(self, value: Any = None) -> None:
        self.was_started = True
        self.inner.started(value)


class GuardedTaskGroup:
    """Stands where an anyio task group is expected (``start_soon``, ``start``, ``cancel_scope``)."""

    def __init__(self, tg: anyio.abc.TaskGroup):
        self._tg = tg
        self.failures = 0

    @property
    def cancel_scope(self) -> anyio.CancelScope:
        return self._tg.cancel_scope

    def _failed(self, func: Callable[..., Any]) -> None:
        self.failures += 1
        log.exception(
            "background task %s failed; the gateway goes on without it", getattr(func, "__qualname__", repr(func))
        )

    def start_soon(self, func: Callable[..., Awaitable[Any]], *args: Any, name: object = None) -> None:
        async def guarded() -> None:
            try:
                await func(*args)
            except Exception:
                self._failed(func)

        self._tg.start_soon(guarded, name=name or getattr(func, "__qualname__", None))

    async def start(self, func: Callable[..., Awaitable[Any]], *args: Any, name: object = None) -> Any:
        async def guarded(*, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
            status = _Status(task_status)
            try:
                await func(*args, task_status=status)
            except Exception:
                if not status.was_started:
                    raise  # the caller of start() gets it, as with a plain task group
                self._failed(func)

        return await self._tg.start(guarded, name=name or getattr(func, "__qualname__", None))
