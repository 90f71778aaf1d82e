"""Long-lived contained workers, keyed by (upstream, agent, effective profile).

A worker starts on its key's first call and serves the calls after it (no per-call start cost). Idle workers
are reaped; a dead worker is dropped and the next call starts a fresh one. Two calls racing for a key that
has no worker yet start one worker, not two. The pool has a ceiling: when it is full, the longest-idle worker
makes room; when every worker is busy, the call is refused with a clear error rather than queued forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.abc

from connectors.jsonrpc import UpstreamError
from gateway.containment.worker import StdioWorker

log = logging.getLogger("gateway.containment")


@dataclass(frozen=True)
class WorkerKey:
    server: str
    agent: str
    profile: str
    """The effective profile's digest (a narrowed profile is a different worker)."""


class WorkerPool:
    def __init__(self, idle_timeout: float, max_workers: int):
        self.idle_timeout = idle_timeout
        self.max_workers = max_workers
        self.workers: dict[WorkerKey, StdioWorker] = {}
        self._locks: dict[WorkerKey, anyio.Lock] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self.on_removed: Callable[[StdioWorker], None] | None = None

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        tg.start_soon(self._reaper)

    def __len__(self) -> int:
        return len(self.workers)

    async def acquire(self, key: WorkerKey, start: Callable[[], Awaitable[StdioWorker]]) -> StdioWorker:
        w = self.workers.get(key)
        if w is not None and w.alive:
            w.last_used = time.monotonic()
            return w
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            w = self.workers.get(key)
            if w is not None and w.alive:
                return w
            if w is not None:
                self.workers.pop(key, None)
            await self._make_room()
            w = await start()
            self.workers[key] = w
            return w

    def forget(self, worker: StdioWorker) -> None:
        """Called when a worker's process has ended."""
        if self.workers.get(worker.key) is worker:
            del self.workers[worker.key]
            self._locks.pop(worker.key, None)
        if self.on_removed is not None:
            self.on_removed(worker)

    async def _make_room(self) -> None:
        live = [w for w in self.workers.values() if w.alive]
        if len(live) < self.max_workers:
            return
        idle = sorted((w for w in live if w.inflight == 0), key=lambda w: w.last_used)
        if not idle:
            raise UpstreamError(
                "containment",
                "unavailable",
                f"has no room for another worker: all {self.max_workers} are busy (max_workers)",
            )
        await self.stop(idle[0], "idle")

    async def stop(self, worker: StdioWorker, reason: str) -> None:
        await worker.proc.kill(reason)
        with anyio.move_on_after(5):
            await worker.done.wait()

    async def _reaper(self) -> None:
        interval = max(0.2, min(self.idle_timeout / 4, 15.0))
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            for w in list(self.workers.values()):
                if w.alive and w.inflight == 0 and now - w.last_used > self.idle_timeout:
                    log.info(
                        "worker %s of %s for %s idle for %.0f s; stopping it",
                        w.id,
                        w.name,
                        w.proc.agent,
                        now - w.last_used,
                    )
                    await self.stop(w, "idle")

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for w in list(self.workers.values()):
                await self.stop(w, "shutdown")
