"""SIGHUP for several listeners: the policy reload and the identity reload both react to it (and to changed files).

anyio's ``open_signal_receiver`` installs the event loop's one handler for the signal: a second receiver
replaces the first, and the first to close removes the handler for both (SIGHUP's default action then kills
the gateway). This hub installs the handler once and fans each signal out to every open receiver.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

# How long watched files must stay unchanged before a reload reads them (a writer may still be at work).
SETTLE_S = 0.2

_receivers: list[MemoryObjectSendStream[int]] = []


def _deliver() -> None:
    for send in list(_receivers):
        try:
            send.send_nowait(signal.SIGHUP)
        except anyio.WouldBlock:
            pass  # a signal is already pending for that receiver: its next reload reads the same files
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass


@contextmanager
def open_sighup_receiver() -> Iterator[MemoryObjectReceiveStream[int]]:
    """Like ``anyio.open_signal_receiver(signal.SIGHUP)``, but any number may be open at once (asyncio only).
    Raises NotImplementedError, RuntimeError or ValueError where signals cannot be handled."""
    loop = asyncio.get_running_loop()
    send, receive = anyio.create_memory_object_stream[int](1)
    if not _receivers:
        loop.add_signal_handler(signal.SIGHUP, _deliver)
    _receivers.append(send)
    try:
        with receive:
            yield receive
    finally:
        _receivers.remove(send)
        send.close()
        if not _receivers:
            loop.remove_signal_handler(signal.SIGHUP)


async def reload_on_sighup(
    reload: Callable[[str], Awaitable[object]],
    log: logging.Logger,
    what: str,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``reload("SIGHUP")`` on each SIGHUP; reports started once the signal is handled (or cannot be)."""
    try:
        with open_sighup_receiver() as signals:
            task_status.started()
            async for _ in signals:
                await reload("SIGHUP")
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        log.warning("%s reload on SIGHUP is not available here: %s", what, exc)
        task_status.started()


async def reload_on_change(
    fingerprint: Callable[[], object],
    last_seen: Callable[[], object],
    interval_s: float,
    reload: Callable[[str], Awaitable[object]],
) -> None:
    """Every ``interval_s``, compare the files' fingerprint with the one the last reload read; when it differs,
    wait until the files stop changing (an editor or a deploy may still be writing), then reload."""
    while True:
        await anyio.sleep(interval_s)
        now = fingerprint()
        if now == last_seen():
            continue
        while True:
            await anyio.sleep(SETTLE_S)
            settled = fingerprint()
            if settled == now:
                break
            now = settled
        await reload("files changed")
