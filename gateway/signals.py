"""SIGHUP for several listeners: the policy reload and the identity reload both react to it.

anyio's ``open_signal_receiver`` installs the event loop's one handler for the signal: a second receiver
replaces the first, and the first to close removes the handler for both (SIGHUP's default action then kills
the gateway). This hub installs the handler once and fans each signal out to every open receiver.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

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
