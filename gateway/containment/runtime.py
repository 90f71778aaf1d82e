"""The gateway's containment runtime: profiles, host probe, launcher, worker pool, egress proxy, metrics.

One per gateway. Built when the configuration has a ``[containment]`` section; upstreams that are contained
(stdio with ``containment = "NAME"``, and the built-in tools) get their workers from here.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from connectors.jsonrpc import UpstreamError
from gateway.containment.egress import EgressGrant, EgressProxy
from gateway.containment.launcher import Launcher, LaunchError, LaunchRequest, WorkerProcess
from gateway.containment.pool import WorkerKey, WorkerPool
from gateway.containment.probe import HostCapabilities, probe
from gateway.containment.profile import NarrowingError, Profile, build_profile, narrow
from gateway.containment.settings import ContainmentConfig
from gateway.containment.worker import WATCH_INTERVAL, StdioWorker, limit_text
from gateway.containment.workspaces import WorkspaceError, Workspaces

log = logging.getLogger("gateway.containment")

KILL_REASONS = frozenset({"timeout", "memory", "pids", "cpu", "crash", "output"})
"""Reasons counted in worker_kills_total (an idle worker stopped by the pool is not a kill)."""


class ContainmentError(ValueError):
    """The containment configuration cannot be used on this host (the gateway refuses to start)."""


@dataclass
class RunResult:
    """One finished one-shot worker (a built-in tool call)."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    kill_reason: str | None
    limit: str | None
    """The agent-facing sentence naming the limit that stopped the worker."""
    worker: str
    tier: str
    profile: str
    seconds: float


class Containment:
    def __init__(self, cfg: ContainmentConfig, base_dir: Path, metrics: Any):
        self.cfg = cfg
        self.metrics = metrics
        self.profiles: dict[str, Profile] = {}
        for name, pcfg in cfg.profiles.items():
            try:
                self.profiles[name] = build_profile(name, pcfg, base_dir)
            except ValueError as exc:
                raise ContainmentError(f"containment.profiles.{name}: {exc}") from None
        root = os.geteuid() == 0
        ws_root = Path(cfg.workspace_root)
        ws_root = ws_root if ws_root.is_absolute() else base_dir / ws_root
        try:
            self.workspaces = Workspaces(ws_root.resolve(), cfg.uid_base, cfg.uid_count, root, cfg.max_workspace_mb)
        except (WorkspaceError, OSError) as exc:
            raise ContainmentError(f"containment.workspace_root: {exc}") from None
        self._own_runtime = cfg.runtime_dir is None
        if cfg.runtime_dir is None:
            self.runtime_dir = Path(tempfile.mkdtemp(prefix="mcp-gateway.", dir="/tmp"))
        else:
            rd = Path(cfg.runtime_dir)
            self.runtime_dir = rd if rd.is_absolute() else base_dir / rd
            self.runtime_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.runtime_dir, 0o711)
        (self.runtime_dir / "egress").mkdir(mode=0o711, exist_ok=True)
        os.chmod(self.runtime_dir / "egress", 0o711)
        self.caps: HostCapabilities = probe(cfg.helper_python, self.workspaces.uid_for_probe(), str(os.getpid()))
        self.egress = EgressProxy(str(self.runtime_dir / "egress"), self._egress_refused)
        self.launcher = Launcher(
            self.caps, self.workspaces, self.egress, self.caps.cgroups, self.runtime_dir, cfg.helper_python
        )
        self.launcher.prepare_runtime()
        self.pool = WorkerPool(cfg.idle_timeout_s, cfg.max_workers)
        self.pool.on_removed = self._worker_removed
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._one_shots = anyio.CapacityLimiter(cfg.max_workers)
        """One-shot workers (built-in tool calls) running at once; the same ceiling as long-lived workers."""

    # --- report ----------------------------------------------------------------------------------------

    def missing(self, profile: Profile) -> list[str]:
        return self.caps.missing(profile)

    def report(self) -> dict[str, Any]:
        profiles = {}
        for name, p in self.profiles.items():
            need = self.missing(p)
            profiles[name] = {**p.describe(), "enforceable": not need, **({"missing": need} if need else {})}
        return {"protections": self.caps.protections(), "profiles": profiles, "workers": len(self.pool)}

    def log_report(self) -> None:
        prot = self.caps.protections()
        log.info(
            "containment protections on this host: %s",
            ", ".join(f"{k}={v}" for k, v in prot.items() if k != "notes" and v is not None),
        )
        for note in prot["notes"]:
            log.info("containment: %s", note)
        for name, p in self.profiles.items():
            need = self.missing(p)
            if need:
                log.error(
                    "containment profile %r (tier %s) cannot be enforced here; its workers will not start: %s",
                    name,
                    p.tier,
                    "; ".join(need),
                )
            elif p.tier == "none":
                log.warning(
                    "containment profile %r: tier none, its workers run unconfined as the gateway's own uid (%d)",
                    name,
                    os.geteuid(),
                )
            else:
                log.info("containment profile %r: tier %s, enforceable", name, p.tier)
            for note in p.unsupported:
                log.warning("containment profile %r (%s): not enforced: %s", name, p.source, note)

    # --- lifecycle -------------------------------------------------------------------------------------

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        if self._tg is not None:
            return
        self._tg = tg
        self.egress.start(tg)
        self.pool.start(tg)

    async def aclose(self) -> None:
        """Stop every worker and remove what the runtime made (cgroups, its runtime directory). Idempotent."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self.pool.aclose()
        self.caps.cgroups.cleanup()
        await anyio.to_thread.run_sync(self.workspaces.close)
        if self._own_runtime:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    # --- profiles per call -----------------------------------------------------------------------------

    def effective(self, server: str, name: str, narrowing: Any) -> Profile:
        """The profile a call runs under: the configured one, narrowed by the policy (never widened)."""
        base = self.profiles[name]
        try:
            p = narrow(base, narrowing, self.profiles)
        except NarrowingError as exc:
            raise UpstreamError(server, "containment", f"refused the call: {exc}") from None
        need = self.missing(p)
        if need:
            lacks = "; ".join(need)
            raise UpstreamError(
                server, "unavailable", f"cannot run: profile {name!r} needs what this host lacks: {lacks}"
            )
        return p

    # --- metrics ---------------------------------------------------------------------------------------

    def _egress_refused(self, grant: EgressGrant, dest: str, why: str) -> None:
        self.metrics.egress_denied.labels(grant.server).inc()

    def _started(self, server: str, tier: str, seconds: float) -> None:
        self.metrics.worker_starts.labels(server, tier).inc()
        self.metrics.worker_start_seconds.labels(tier).observe(seconds)
        self.metrics.workers.labels(server, tier).inc()

    def _ended(self, server: str, tier: str, reason: str | None) -> None:
        self.metrics.workers.labels(server, tier).dec()
        if reason in KILL_REASONS:
            self.metrics.worker_kills.labels(server, reason).inc()

    def _worker_removed(self, w: StdioWorker) -> None:
        self._ended(w.proc.server, w.proc.tier, w.reason)
        if w.reason in KILL_REASONS:
            log.warning("worker %s of %s for agent %s stopped: %s", w.id, w.proc.server, w.proc.agent, w.reason)

    # --- long-lived stdio workers ----------------------------------------------------------------------

    async def worker(
        self, key: WorkerKey, req: LaunchRequest, start_timeout: float, on_notification: Any = None
    ) -> StdioWorker:
        async def start() -> StdioWorker:
            assert self._tg is not None, "containment runtime not started"
            t0 = time.perf_counter()
            try:
                proc = await self.launcher.spawn(req, long_lived=True)
            except (LaunchError, WorkspaceError) as exc:
                raise UpstreamError(req.server, "unavailable", f"worker could not start: {exc}") from None
            w = StdioWorker(key, proc, self.pool.forget)
            w.on_notification = on_notification
            await self._tg.start(w.run, start_timeout)
            self._started(req.server, req.profile.tier, time.perf_counter() - t0)
            log.info(
                "worker %s of %s for agent %s started (tier %s, profile %s, uid %s) in %.1f ms",
                w.id,
                req.server,
                req.agent,
                req.profile.tier,
                req.profile.name,
                proc.uid,
                (time.perf_counter() - t0) * 1000,
            )
            return w

        return await self.pool.acquire(key, start)

    # --- one-shot workers (built-in tools) -------------------------------------------------------------

    async def run_once(self, req: LaunchRequest, stdin: bytes, timeout: float, output_limit: int) -> RunResult:
        try:
            with anyio.fail_after(timeout):
                await self._one_shots.acquire()
        except TimeoutError:
            raise UpstreamError(
                req.server,
                "unavailable",
                f"no room for another worker: {self.cfg.max_workers} are running (max_workers)",
            ) from None
        try:
            return await self._run_once(req, stdin, timeout, output_limit)
        finally:
            self._one_shots.release()

    async def _run_once(self, req: LaunchRequest, stdin: bytes, timeout: float, output_limit: int) -> RunResult:
        p = req.profile
        t0 = time.perf_counter()
        try:
            wp = await self.launcher.spawn(req, long_lived=False)
        except (LaunchError, WorkspaceError) as exc:
            raise UpstreamError(req.server, "unavailable", f"worker could not start: {exc}") from None
        self._started(req.server, p.tier, time.perf_counter() - t0)
        out = _Capture(output_limit)
        err = _Capture(output_limit)
        code: int | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_feed, wp, stdin)
                tg.start_soon(out.read, wp.proc.stdout)
                tg.start_soon(err.read, wp.proc.stderr)
                with anyio.move_on_after(timeout) as limit_scope:
                    watch = anyio.create_task_group()
                    async with watch:
                        watch.start_soon(_watch, wp, watch.cancel_scope)
                        code = await wp.proc.wait()
                        watch.cancel_scope.cancel()
                if limit_scope.cancelled_caught:
                    await wp.kill("timeout")
                # Whatever the worker left behind dies with it (its pid namespace or cgroup), so the pipes close.
                wp.signal_all()
                code = await wp.proc.wait() if code is None else code
                with anyio.move_on_after(5):
                    await out.done.wait()
                    await err.done.wait()
                tg.cancel_scope.cancel()
        finally:
            reason = wp.kill_reason or (wp.breach(None) if wp.cgroup is not None else None)
            if reason is None and code is not None and code != 0 and wp.exit_reason(code) == "cpu":
                reason = "cpu"
            await wp.cleanup()
            self._ended(req.server, p.tier, reason)
        limit = None
        if reason is not None:
            limit = limit_text(reason, p, code)
            log.warning("one-shot worker %s of %s for agent %s stopped: %s", wp.id, req.server, req.agent, reason)
        return RunResult(
            code,
            out.data,
            err.data,
            out.truncated,
            err.truncated,
            reason,
            limit,
            wp.id,
            p.tier,
            p.name,
            time.perf_counter() - t0,
        )


async def _feed(wp: WorkerProcess, data: bytes) -> None:
    stdin = wp.proc.stdin
    if stdin is None:
        return
    try:
        if data:
            await stdin.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    try:
        await stdin.aclose()
    except (anyio.BrokenResourceError, OSError):
        pass


async def _watch(wp: WorkerProcess, scope: anyio.CancelScope) -> None:
    cpu_start = 0.0 if wp.cgroup is not None else None
    while True:
        await anyio.sleep(WATCH_INTERVAL)
        reason = wp.breach(cpu_start)
        if reason is not None:
            await wp.kill(reason)
            return


class _Capture:
    def __init__(self, limit: int):
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False
        self.done = anyio.Event()

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    async def read(self, stream: Any) -> None:
        try:
            async for chunk in stream:
                room = self.limit - self.size
                if room > 0:
                    self.chunks.append(chunk[:room])
                    self.size += min(room, len(chunk))
                if len(chunk) > room:
                    self.truncated = True  # keep draining, so the worker never blocks on a full pipe
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self.done.set()
