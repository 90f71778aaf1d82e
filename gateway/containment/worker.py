"""A contained stdio MCP server: one process serving one (upstream, agent, effective profile).

Unlike the shared stdio connector it does not restart itself: when it dies or is killed, pending calls fail
with the reason (naming the limit when one was hit) and the pool starts a fresh worker on the next call.
Limits are watched while calls are in flight: memory (OOM kills in its cgroup), pids (forks refused), CPU
used since the call started, and the call's time limit. A breach kills the whole worker.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import orjson

from connectors.jsonrpc import JsonRpcPeer, ProgressFn, UpstreamError
from connectors.lines import NOT_JSON, JsonLines, LineTooLong
from gateway.containment.launcher import WorkerProcess
from gateway.containment.profile import Profile

log = logging.getLogger("gateway.containment")

MAX_LINE_BYTES = 64 * 1024 * 1024
WATCH_INTERVAL = 0.05


def limit_text(reason: str, profile: Profile, exit_code: int | None = None) -> str:
    """The agent-facing sentence for a stopped worker, naming the limit and its configured value."""
    what = {
        "memory": f"memory limit reached (memory_mb = {profile.memory_mb})",
        "pids": f"process limit reached (pids = {profile.pids})",
        "cpu": f"CPU time limit reached (cpu_seconds = {profile.cpu_seconds:g})",
        "timeout": f"time limit reached (timeout_s = {profile.timeout_s:g})",
        "output": "output limit exceeded",
        "idle": "stopped after being idle",
        "shutdown": "stopped because the gateway is shutting down",
    }.get(reason)
    if what is None:
        return "the worker exited unexpectedly" + (f" (exit code {exit_code})" if exit_code is not None else "")
    return f"{what} of containment profile {profile.name!r}"


class StdioWorker(JsonRpcPeer):
    def __init__(self, key: Any, proc: WorkerProcess, on_exit: Callable[[StdioWorker], None]):
        super().__init__(proc.server)
        self.key = key
        self.proc = proc
        self.on_exit = on_exit
        self.inflight = 0
        self.last_used = time.monotonic()
        self.start_seconds = 0.0
        self.exit_code: int | None = None
        self.reason: str | None = None
        self._write_lock = anyio.Lock()
        self._ready = anyio.Event()
        self.done = anyio.Event()
        self._stderr: deque[str] = deque(maxlen=20)
        self._stderr_done = anyio.Event()

    @property
    def id(self) -> str:
        return self.proc.id

    @property
    def alive(self) -> bool:
        return not self.done.is_set() and self.proc.kill_reason is None

    def stderr_tail(self) -> str:
        return " | ".join(self._stderr)[-600:]

    async def _send(self, message: dict[str, Any]) -> None:
        stdin = self.proc.proc.stdin
        if stdin is None or not self.alive:
            raise UpstreamError(self.name, "unavailable", "worker is not running")
        data = orjson.dumps(message) + b"\n"
        try:
            async with self._write_lock:
                await stdin.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            raise UpstreamError(self.name, "crashed", "worker closed its input") from None

    async def run(self, start_timeout: float, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Serve until the process ends. Reports started once the MCP handshake is done (or raises)."""
        t0 = time.perf_counter()
        started = False
        failed: UpstreamError | None = None
        try:
            async with anyio.create_task_group() as tg:
                self._spawn = tg.start_soon
                tg.start_soon(self._read_stdout)
                tg.start_soon(self._drain_stderr)
                try:
                    with anyio.fail_after(start_timeout):
                        result = await JsonRpcPeer.request(self, "initialize", self._initialize_params(), start_timeout)
                    self._adopt(result)
                    await self.notify("notifications/initialized")
                except (TimeoutError, UpstreamError) as exc:
                    with anyio.move_on_after(0.5):  # its last words (say, the helper's) are the reason
                        await self._stderr_done.wait()
                    tail = self.stderr_tail()
                    detail = "did not initialize in time" if isinstance(exc, TimeoutError) else exc.detail
                    # Raised below, outside the task group (which would wrap it in a group its callers do not expect).
                    failed = UpstreamError(
                        self.name, "unavailable", f"worker could not start: {detail}" + (f" [{tail}]" if tail else "")
                    )
                    tg.cancel_scope.cancel()
                else:
                    self.start_seconds = time.perf_counter() - t0
                    self._ready.set()
                    started = True
                    task_status.started()
                    self.exit_code = await self.proc.proc.wait()
                    tg.cancel_scope.cancel()
            if failed is not None:
                raise failed
        finally:
            self._spawn = None
            self.reason = self.proc.exit_reason(self.exit_code)
            self.done.set()
            err = UpstreamError(self.name, "killed" if self.proc.kill_reason else "crashed", self.reason)
            self._fail_all(err)
            with anyio.CancelScope(shield=True):
                await self.proc.cleanup()
            if started:
                self.on_exit(self)

    async def _read_stdout(self) -> None:
        stdout = self.proc.proc.stdout
        assert stdout is not None
        lines = JsonLines(MAX_LINE_BYTES)
        try:
            async for chunk in stdout:
                for msg in lines.feed(chunk):
                    if msg is NOT_JSON:
                        log.debug("worker %s of %s wrote a line that is not JSON; ignored", self.id, self.name)
                    else:
                        await self._dispatch(msg)
        except LineTooLong:
            log.warning("worker %s of %s sent an oversized message; killing it", self.id, self.name)
            await self.proc.kill("output")
            return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        # stdout closed: the server is gone (or closed it on purpose); make sure the process follows
        if self.proc.proc.returncode is None:
            with anyio.move_on_after(2):
                await self.proc.proc.wait()
            if self.proc.proc.returncode is None:
                await self.proc.kill("crash")
        if not self._ready.is_set():  # it can never answer its handshake: fail it now, not at the start timeout
            code = self.proc.proc.returncode
            self._fail_all(
                UpstreamError(
                    self.name,
                    "crashed",
                    "exited before it initialized" + (f" (exit code {code})" if code is not None else ""),
                )
            )

    async def _drain_stderr(self) -> None:
        stderr = self.proc.proc.stderr
        assert stderr is not None
        try:
            async for chunk in stderr:
                for line in chunk.decode("utf-8", "replace").splitlines():
                    if line.strip():
                        self._stderr.append(line[:300])
                        log.debug("worker %s of %s stderr: %s", self.id, self.name, line[:2000])
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self._stderr_done.set()

    async def call(
        self, method: str, params: dict[str, Any] | None, timeout: float, on_progress: ProgressFn | None = None
    ) -> dict[str, Any]:
        """A request under the worker's limits: a breach or the time limit kills the worker (and fails the call)."""
        self.inflight += 1
        self.last_used = time.monotonic()
        cpu_start = self.proc.cpu_seconds()
        result: dict[str, Any] = {}
        error: UpstreamError | None = None

        async def watch() -> None:
            while True:
                await anyio.sleep(WATCH_INTERVAL)
                reason = self.proc.breach(cpu_start)
                if reason is not None:
                    log.warning(
                        "worker %s of %s for %s: %s limit breached; killing it",
                        self.id,
                        self.name,
                        self.proc.agent,
                        reason,
                    )
                    await self.proc.kill(reason)
                    return

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                try:
                    result = await JsonRpcPeer.request(self, method, params, timeout, on_progress)
                except UpstreamError as exc:
                    error = exc  # raised below, outside the task group (which would wrap it in a group)
                finally:
                    tg.cancel_scope.cancel()
            if error is not None:
                if error.kind == "timeout":
                    await self.proc.kill("timeout")
                raise error
            # A limit hit during the call (say, an OOM kill of one of its children) stops the worker even when
            # the server still managed to answer: the agent is told which limit, and the next call starts clean.
            reason = self.proc.breach(cpu_start)
            if reason is not None:
                await self.proc.kill(reason)
                raise UpstreamError(self.name, "killed", reason)
        finally:
            self.inflight -= 1
            self.last_used = time.monotonic()
        return result
