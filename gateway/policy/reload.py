"""Live policy reload: watch the policy (directory or bundle file), and on change or SIGHUP compile the new
revision, run its table tests, and swap it in only if both succeed.

A refused revision is logged with every reason and the old one keeps serving; decisions already running
finish on the revision they started with (the engine swaps one reference). Polling mtimes needs no inotify
and works the same on bind mounts and config-map volumes, where file events are unreliable.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.to_thread

from gateway.bundles.poller import BundleSource
from gateway.config import PolicyConfig
from gateway.memory import release_free_memory
from gateway.metrics import Metrics
from gateway.policy.decision import PolicyError
from gateway.policy.engines import compile_source, is_local
from gateway.policy.loader import PolicySource, is_policy_file, load_policy
from gateway.policy.tables import report, run_policy_tables
from gateway.signals import reload_on_change, reload_on_sighup

if TYPE_CHECKING:  # regopy (rego-cpp, ~12 MB) is imported only by a gateway configured with engine = "regopy"
    from gateway.policy.embedded import CompiledPolicy, EmbeddedEngine

log = logging.getLogger("gateway.policy")

_PREFLIGHT_TIMEOUT_S = 120


@dataclass(frozen=True)
class ReloadResult:
    result: str
    """success, unchanged, compile_error or test_failure (the metric's label)."""
    revision: str
    """The revision serving after the attempt."""
    details: tuple[str, ...] = ()


def fingerprint(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, mtimes and sizes of the policy's files: any edit, addition or removal changes it."""
    try:
        if path.is_file():
            st = path.stat()
            return ((path.name, st.st_mtime_ns, st.st_size),)
        out = []
        for p in path.rglob("*"):
            rel = p.relative_to(path).as_posix()
            if is_policy_file(rel) and p.is_file():
                st = p.stat()
                out.append((rel, st.st_mtime_ns, st.st_size))
        return tuple(sorted(out))
    except OSError:
        return ()


def preflight(path: Path, decision_path: str, engine: str = "embedded") -> ReloadResult | None:
    """Compile and test the candidate in a child process first: rego-cpp aborts its process on some malformed
    policies, and a candidate must never take the serving gateway down with it."""
    argv = [
        sys.executable,
        "-m",
        "gateway",
        "policy",
        "test",
        str(path),
        "--decision",
        decision_path,
        "-q",
        "--allow-no-tests",
        "--engine",
        engine,
    ]
    root = str(Path(__file__).resolve().parents[2])  # the child imports this very gateway package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=_PREFLIGHT_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return ReloadResult("compile_error", "", (f"{path}: compiling and testing took over {_PREFLIGHT_TIMEOUT_S} s",))
    lines = bounded((proc.stderr + proc.stdout).strip().splitlines())
    if proc.returncode == 0:
        return None
    if proc.returncode == 1:
        return ReloadResult("test_failure", "", lines)
    if proc.returncode < 0:
        return ReloadResult(
            "compile_error",
            "",
            (
                f"{path}: the embedded engine crashed on this policy (signal "
                f"{-proc.returncode}); it was compiled in a child process",
            ),
        )
    return ReloadResult("compile_error", "", lines)


MAX_CASES = 200
"""Failing cases named in a refused reload's log (each one's FAIL line), first ones first."""
MAX_LINES = 600
"""Lines of a refused reload's details in all: every FAIL line first, then as much of each diff as fits."""


def bounded(lines: list[str], max_cases: int = MAX_CASES, max_lines: int = MAX_LINES) -> tuple[str, ...]:
    """What a refused reload logs: every failing case (up to ``max_cases``), first ones first, each with as much of
    its diff as the bound leaves room for, then the other lines (the totals, compile errors), first ones first.

    Keeping the last lines instead (as ``tail`` would) drops the first failures, which are the ones to fix first."""
    cases: list[list[str]] = []
    other: list[str] = []
    for line in lines:
        if line.startswith("FAIL "):
            cases.append([line])
        elif cases and line.startswith("    "):
            cases[-1].append(line)
        elif line.strip():
            other.append(line)
    shown = cases[:max_cases]
    room = max(0, max_lines - len(shown) - min(len(other), max_lines // 4) - 1)
    out: list[str] = []
    for case in shown:
        out.append(case[0])
        diff = case[1 : 1 + room]
        room -= len(diff)
        out.extend(diff)
        if len(diff) < len(case) - 1:
            out.append(f"    ... ({len(case) - 1 - len(diff)} more lines of this diff)")
    if len(cases) > len(shown):
        out.append(f"... and {len(cases) - len(shown)} more failing cases")
    keep = max_lines // 4 if cases else max_lines
    out.extend(other[:keep])
    if len(other) > keep:
        out.append(f"... and {len(other) - keep} more lines")
    return tuple(out)


def snapshot(path: Path, into: Path) -> Path:
    """A private copy of the policy's files (a bundle, or a directory's policy files), each read once."""
    if path.is_file():
        copy = into / path.name
        copy.write_bytes(path.read_bytes())
        return copy
    copy = into / "policy"
    copy.mkdir()
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if is_policy_file(rel) and p.is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            (copy / rel).write_bytes(p.read_bytes())
    return copy


def prepare(
    path: Path, decision_path: str, compile: Callable[[PolicySource], Any] | None = None, engine: str = "embedded"
) -> tuple[CompiledPolicy | None, ReloadResult | None]:
    """Compile and test a candidate revision (in a worker thread: it takes a while).

    The child process and this one work on the same snapshot of the files: a deploy still writing them cannot
    slip a version the child never checked (one that may abort rego-cpp) into the serving process.
    """
    with tempfile.TemporaryDirectory(prefix="mcp-gateway-policy-") as tmp:
        try:
            copy = snapshot(path, Path(tmp))
        except OSError as exc:
            return None, ReloadResult("compile_error", "", (f"{path}: cannot be read: {exc}",))

        def named(lines: tuple[str, ...] | list[str]) -> tuple[str, ...]:
            return tuple(line.replace(str(copy), str(path)) for line in lines)

        failure = preflight(copy, decision_path, engine)
        if failure is not None:
            return None, dataclasses.replace(failure, details=named(failure.details))
        try:
            source = dataclasses.replace(load_policy(copy), root=path)
            policy = compile(source) if compile is not None else compile_source(source, decision_path, engine)
        except PolicyError as exc:
            return None, ReloadResult("compile_error", "", named(bounded(exc.errors)))
    try:
        results = run_policy_tables(policy)
    except PolicyError as exc:  # a malformed table file is a failed test, not a crash
        return None, ReloadResult("test_failure", "", bounded(exc.errors))
    lines, failed = report(results, verbose=False)
    if failed:
        return None, ReloadResult("test_failure", "", bounded(lines))
    return policy, None


class PolicyWatcher:
    """Keeps the engine's policy current and the revision metric true, for the gateway's lifetime."""

    def __init__(self, engine: Any, metrics: Metrics, cfg: PolicyConfig, bundles: BundleSource | None = None):
        self.engine = engine
        self.metrics = metrics
        self.interval = cfg.watch_interval_s
        self.reloadable = is_local(engine)
        self.bundles = bundles
        """With ``[policy] bundle_url``: revisions come from the bundle server, not from ``path`` (never watched)."""
        self.watch = cfg.watch and bundles is None
        self._lock = anyio.Lock()
        self._published = ""
        # The files as the engine just loaded them: an edit made while the start-up table check runs (the gateway
        # already serves then) is a change the first poll sees, not part of a baseline taken after it.
        self._seen: tuple[tuple[str, int, int], ...] = (
            fingerprint(engine.path) if self.watch and self.reloadable else ()
        )

    def publish_revision(self) -> None:
        rev = self.engine.revision
        if rev != self._published:
            self.metrics.policy_revision.info({"revision": rev})
            if self._published:
                self.metrics.policy_bundle_info.remove(self._published)
            self.metrics.policy_bundle_info.labels(rev).set(1)
            self._published = rev

    async def reload(self, why: str, path: Path | None = None) -> ReloadResult:
        """Compile and test the policy on disk (``path``: a downloaded bundle; default the configured policy); swap
        it in if both pass. One reload at a time."""
        engine: EmbeddedEngine = self.engine
        async with self._lock:
            if path is None:
                path = engine.path
                self._seen = fingerprint(path)
            old = engine.revision
            policy, failure = await anyio.to_thread.run_sync(
                prepare, path, engine.decision_path, engine.compile, engine.name
            )
            if policy is None:
                assert failure is not None
                result = ReloadResult(failure.result, old, failure.details)
                log.error(
                    "policy reload (%s) refused, revision %s keeps serving: %s\n  %s",
                    why,
                    old,
                    failure.result,
                    "\n  ".join(failure.details),  # bounded, first ones first
                )
            elif policy.revision == old:
                result = ReloadResult("unchanged", old)
                log.info("policy reload (%s): revision %s unchanged", why, old)
            else:
                engine.swap(policy)
                result = ReloadResult("success", policy.revision)
                log.info("policy reload (%s): revision %s replaces %s", why, policy.revision, old)
            self.metrics.policy_reloads.labels(result.result).inc()
            self.publish_revision()
            release_free_memory()  # what the compilation freed (gateway/memory.py); the old revision too
            return result

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Runs for the gateway's lifetime; reports started once SIGHUP is handled (its default action kills)."""
        self.publish_revision()
        if not self.reloadable:
            task_status.started()
            while True:  # the OPA engine learns its revision from OPA's answers: keep the metric in step
                await anyio.sleep(self.interval)
                self.publish_revision()
        async with anyio.create_task_group() as tg:
            # with bundles, SIGHUP polls the bundle server at once (the configured path is not the policy then)
            await tg.start(reload_on_sighup, self.bundles.poll_now if self.bundles else self.reload, log, "policy")
            task_status.started()
            await self._check_initial()
            if self.bundles is not None:
                await self.bundles.run(self.reload)
            elif self.watch:
                await self._poll()

    async def _check_initial(self) -> None:
        """Say at start whether the serving revision passes its own tables (it serves either way)."""
        engine: EmbeddedEngine = self.engine
        try:
            results = await anyio.to_thread.run_sync(run_policy_tables, engine.policy)
        except PolicyError as exc:
            log.warning("policy %s: its table tests cannot be read:\n  %s", engine.revision, "\n  ".join(exc.errors))
            return
        lines, failed = report(results, verbose=False)
        if failed:
            log.warning(
                "policy %s fails %d of its table tests:\n  %s", engine.revision, failed, "\n  ".join(bounded(lines))
            )
        else:
            log.info("policy %s: %s", engine.revision, lines[-1])

    async def _poll(self) -> None:
        path: Path = self.engine.path
        await reload_on_change(lambda: fingerprint(path), lambda: self._seen, self.interval, self.reload)
