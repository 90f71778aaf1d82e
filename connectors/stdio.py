"""Upstream MCP servers the gateway launches and supervises as child processes over stdio.

The child gets only the configured environment, runs in its own session (process group), is restarted with
backoff when it dies, and is killed with the gateway. Messages are newline-delimited JSON, parsed with orjson.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import orjson

from connectors.base import DEFAULT_MAX_MESSAGE_BYTES, Limits, StateFn, open_piped
from connectors.jsonrpc import JsonRpcPeer, UpstreamError
from connectors.lines import NOT_JSON, JsonLines, LineTooLong

log = logging.getLogger("gateway.upstream")

MAX_LINE_BYTES = DEFAULT_MAX_MESSAGE_BYTES
"""Kept for callers that read it; each connector cuts at its own ``limits.max_message_bytes``."""
_BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


class StdioConnector(JsonRpcPeer):
    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        start_timeout: float = 30.0,
        on_state: StateFn | None = None,
        limits: Limits | None = None,
    ):
        super().__init__(name, limits)
        self.command = list(command)
        # A clean environment: only what the config names, plus a PATH so the command can be found.
        self.env = {"PATH": os.environ.get("PATH", _BASE_PATH), **(env or {})}
        self.cwd = cwd
        self.start_timeout = start_timeout
        self.on_state = on_state
        self._proc: anyio.abc.Process | None = None
        self._ready = anyio.Event()
        self._stopping = False
        self.restarts = 0
        self.last_error = "not started"
        self._unsaid = False
        """last_error is an exception's own text (for /readyz and the log): agents are told less."""
        self._stop_reason = ""
        """Why the gateway stopped the running process itself (else its exit code says why it stopped)."""
        self._stop_kind = "crashed"
        """How the calls in flight fail when it stops: ``oversize`` when it was stopped for an oversized message."""
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def up(self) -> bool:
        return self._ready.is_set()

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        tg.start_soon(self._supervise)

    async def wait_ready(self, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            await self._ready.wait()
        return self._ready.is_set()

    async def request(self, method: str, params: dict[str, Any] | None, timeout: float, on_progress: Any = None):
        if not self._ready.is_set() and (self._stopping or not await self.wait_ready(min(timeout, self.start_timeout))):
            why = "it could not be started; the gateway's log says why" if self._unsaid else self.last_error
            raise UpstreamError(self.name, "unavailable", f"is not running ({why})")
        return await super().request(method, params, timeout, on_progress)

    async def _send(self, message: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise UpstreamError(self.name, "unavailable", "is not running")
        data = orjson.dumps(message, option=orjson.OPT_APPEND_NEWLINE)
        try:  # one write of the whole line (connectors/process.py): concurrent senders never interleave
            await proc.stdin.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            raise UpstreamError(self.name, "crashed", "closed its input") from None

    async def _supervise(self) -> None:
        backoff = 0.1
        while not self._stopping:
            started = anyio.current_time()
            try:
                await self._run_once()
            except Exception as exc:
                self.last_error = str(exc)
                self._unsaid = not isinstance(exc, UpstreamError)
                log.warning("upstream %s: %s", self.name, exc)
            if self.on_state:
                self.on_state(self, False)
            if self._stopping:
                return
            self.restarts += 1
            if anyio.current_time() - started > 10:
                backoff = 0.1
            log.warning("upstream %s stopped (%s); restarting in %.1f s", self.name, self.last_error, backoff)
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _run_once(self) -> None:
        proc = await open_piped(list(self.command), self.env, self.cwd)
        self._proc = proc
        self._stop_reason = ""
        self._stop_kind = "crashed"
        self._answers = 0  # the previous process's answers in flight were cancelled with it
        try:
            async with anyio.create_task_group() as tg:
                self._spawn = tg.start_soon
                tg.start_soon(self._read_stdout, proc)
                tg.start_soon(self._drain_stderr, proc)
                try:
                    with anyio.fail_after(self.start_timeout):
                        result = await JsonRpcPeer.request(
                            self, "initialize", self._initialize_params(), self.start_timeout
                        )
                    self._adopt(result)
                    await self.notify("notifications/initialized")
                except TimeoutError:
                    raise UpstreamError(self.name, "unavailable", "did not initialize in time") from None
                self._ready.set()
                self.last_error = ""
                self._unsaid = False
                if self.on_state:
                    self.on_state(self, True)
                code = await proc.wait()
                self.last_error = self._stop_reason or f"exited with code {code}"
                tg.cancel_scope.cancel()
        finally:
            # Down first, then fail what is in flight: a call made from here on waits for the restart instead of
            # being written to a process that is going away (and waiting for an answer until its timeout).
            self._spawn = None
            self._proc = None
            if self._ready.is_set():
                self._ready = anyio.Event()
            why = f"stopped while the call was in flight ({self.last_error})"
            self._fail_all(UpstreamError(self.name, self._stop_kind, why))
            with anyio.CancelScope(shield=True):
                await self._kill(proc)

    async def _read_stdout(self, proc: anyio.abc.Process) -> None:
        assert proc.stdout is not None
        limit = self.limits.max_message_bytes
        lines = JsonLines(limit)
        try:
            async for chunk in proc.stdout:
                for msg in lines.feed(chunk):
                    if msg is NOT_JSON:
                        self._ignored("a line that is not JSON")
                    else:
                        await self._dispatch(msg)
        except LineTooLong:
            log.error("upstream %s sent a message over %d bytes; killing it", self.name, limit)
            self._stop_reason = f"sent a message over the limit of {limit} bytes"
            self._stop_kind = "oversize"
            await self._kill(proc)
            return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        # Its output is closed: it can answer nothing more. Give it a moment to exit by itself (its exit code is
        # the better error), else stop it, so that it is restarted rather than left to time every call out.
        with anyio.move_on_after(1):
            await proc.wait()
        if proc.returncode is None:
            self._stop_reason = "closed its output"
            await self._kill(proc)

    async def _drain_stderr(self, proc: anyio.abc.Process) -> None:
        assert proc.stderr is not None
        try:
            async for chunk in proc.stderr:
                if not log.isEnabledFor(logging.DEBUG):  # read and dropped: decoding it costs for nothing
                    continue
                for line in chunk.decode("utf-8", "replace").splitlines():
                    if line.strip():
                        log.debug("upstream %s stderr: %s", self.name, line[:2000])
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def _kill(self, proc: anyio.abc.Process) -> None:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            with anyio.move_on_after(2):
                await proc.wait()
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
        else:
            try:  # the leader is gone; take any children it left in its group with it
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                await stream.aclose()

    async def aclose(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None:
            await self._kill(proc)
