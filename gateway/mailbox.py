"""A bounded, ordered outbox of notifications for one agent session.

Notifications from shared upstreams (resource updates, list changes) reach many agent sessions. Sending each one in
its own background task let an upstream that floods them, towards an agent that stops reading its stream, pile up
tasks and memory without end. Each session instead gets one mailbox: a buffer of at most ``capacity`` notifications
and one delivery task that sends them in order. When the buffer is full the oldest waiting notification is dropped
(and counted): these notifications are hints to re-read or re-list, so the newest carry what matters. A slow agent
therefore costs one blocked task and ``capacity`` buffered messages, and never holds up the upstream's reader or
any other session.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

DEFAULT_CAPACITY = 64
PROGRESS_CAPACITY = 16
"""Progress of one call: only the newest matters, the oldest are dropped first."""

Send = Callable[[str, dict[str, Any]], Awaitable[None]]
Spawn = Callable[..., object]


class Mailbox:
    """One session's outbox; ``put`` never blocks, ``close`` drops what is left and stops the delivery task."""

    def __init__(
        self, send: Send, spawn: Spawn, on_drop: Callable[[str], None], capacity: int = DEFAULT_CAPACITY
    ) -> None:
        self._send = send
        self._spawn = spawn
        self._on_drop = on_drop
        self.capacity = max(1, capacity)
        self._items: deque[tuple[str, dict[str, Any]]] = deque()
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._started = False
        self._closed = False
        self._scope: anyio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, method: str, params: dict[str, Any]) -> None:
        if self._closed:
            return
        if len(self._items) >= self.capacity:
            dropped, _ = self._items.popleft()
            self._on_drop(dropped)
        self._items.append((method, params))
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._wake.set()
        if not self._started:
            self._started = True  # one delivery task per session, started with its first notification
            self._spawn(self._deliver)

    async def drain(self) -> None:
        """Wait until everything put so far was sent (or the mailbox closed): what came before an answer goes
        before it. Only the caller waits, as long as its own agent takes to read."""
        await self._idle.wait()

    def close(self) -> None:
        self._closed = True
        self._items.clear()
        self._idle.set()
        if self._scope is not None:
            self._scope.cancel()

    async def _deliver(self) -> None:
        with anyio.CancelScope() as self._scope:
            while not self._closed:
                while self._items:
                    method, params = self._items.popleft()
                    await self._send(method, params)  # the outlet drops (never raises) what it cannot send
                self._idle.set()
                self._wake = anyio.Event()
                await self._wake.wait()
