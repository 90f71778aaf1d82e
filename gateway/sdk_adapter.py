"""Every reach into the private internals of the MCP SDK, uvicorn and sse-starlette, in one place.

The gateway relies on a few behaviours these libraries do not promise. Each one is a small function here with
a test of its own in ``tests/test_sdk_adapter.py``: a release that changes one fails a test named after it,
instead of silently breaking the hot path. ``pyproject.toml`` pins ``mcp`` to the minor series they passed on.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

log = logging.getLogger("gateway.http")


# --- uvicorn ---------------------------------------------------------------------------------------------------


class QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the process' signal handlers alone.

    The admin listener runs beside the agent listener in one event loop; only the agent listener's server takes
    SIGTERM/SIGINT (uvicorn's ``capture_signals``), and the admin one is told to stop when the agent one stops.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server_exiting() -> bool:
    """Has uvicorn been told to stop? (Its SIGTERM handler is a bound method of the server: sse-starlette's way.)"""
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


