"""Shadow revision: a candidate policy decides beside the live one on real traffic, off the call path.

The admission stage offers each decision it made (input and live decision) to a bounded queue and moves on: the
offer never waits (a full queue drops the decision and counts it). One background task evaluates the candidate
on each input and, where the two disagree on ``allow``, writes a ``shadow_disagreement`` audit record (both
decisions, the decision id, both revisions) and counts it. Nothing the shadow decides reaches an agent.
``mcp-gateway policy diff`` summarises the records (gateway/policy/diff.py); promoting the candidate is one reload
of the live policy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from gateway.bundles.poller import BundleSource
from gateway.bundles.settings import bundle_settings
from gateway.config import Config, PolicyConfig
from gateway.metrics import Metrics
from gateway.policy.decision import Decision, PolicyEngine
from gateway.policy.engines import open_engine
from gateway.policy.reload import ReloadResult, fingerprint, prepare
from gateway.record import Recorder
from gateway.signals import reload_on_change, reload_on_sighup

log = logging.getLogger("gateway.policy.shadow")


def shadow_config(cfg: PolicyConfig, path: str) -> PolicyConfig:
    """The live ``[policy]`` settings with the candidate's path, on the live policy's local engine (the embedded one
    when the live policy is on OPA), one evaluator thread where the engine has threads (it shares the host with the
    live engine), and no watching of its own."""
    engine = cfg.engine if cfg.engine != "opa" else "embedded"
    return cfg.model_copy(update={"path": path, "engine": engine, "threads": 1, "threads_per_agent": 1, "watch": False})


def open_shadow(config: Config, recorder: Recorder, metrics: Metrics) -> Shadow | None:
    """The shadow ``[policy]`` names: ``shadow_path`` (read now), or ``shadow_bundle_url`` (polled; until its first
    bundle the engine holds a placeholder and nothing is shadowed), or None."""
    p = config.policy
    if p.shadow_path is not None:
        return Shadow(open_engine(shadow_config(p, p.shadow_path), config), recorder, metrics, p.shadow_queue)
    if p.shadow_bundle_url is None:
        return None
    live_bundles = p.model_copy(update={"bundle_url": p.shadow_bundle_url, "bundle_fallback_path": None})
    source = BundleSource(bundle_settings(config.model_copy(update={"policy": live_bundles})))
    engine = open_engine(shadow_config(p, source.initial_policy(p).path), config)
    return Shadow(engine, recorder, metrics, p.shadow_queue, source)


@dataclass(frozen=True, slots=True)
class Offered:
    """One live decision waiting for the shadow's."""

    decision_id: str
    agent: str
    team: str
    action: str
    server: str | None
    tool: str | None
    input: dict[str, Any]
    live: Decision


def _summary(d: Decision) -> dict[str, Any]:
    out: dict[str, Any] = {"allow": d.allow, "reasons": list(d.reasons), "revision": d.revision}
    if d.result.get("mode") is not None:
        out["mode"] = d.result.get("mode")
    if d.error is not None:
        out["error"] = d.error
    return out


class Shadow:
    def __init__(
        self, engine: PolicyEngine, recorder: Recorder, metrics: Metrics, size: int, bundles: BundleSource | None = None
    ):
        self.engine = engine
        self.bundles = bundles
        """With ``shadow_bundle_url``: the candidate's poller (its own, uncounted: the bundle metrics are the live
        policy's)."""
        self.ready = bundles is None
        """False until a candidate bundle is in: decisions are not offered before (a placeholder would disagree)."""
        self._recorder = recorder
        self._metrics = metrics
        self._send, self._receive = anyio.create_memory_object_stream[Offered](size)
        self._seen: tuple[tuple[str, int, int], ...] = ()

    def offer(self, item: Offered) -> None:
        """Queue a live decision for the shadow; never waits (a full queue drops it, counted)."""
        if not self.ready:
            return
        try:
            self._send.send_nowait(item)
        except anyio.WouldBlock:
            self._metrics.shadow_dropped.inc()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Runs for the gateway's lifetime: one decision at a time (the live engine keeps the evaluators)."""
        log.info("shadow policy %s beside the live one", self.engine.revision)
        task_status.started()
        async with self._receive:
            async for item in self._receive:
                await self.compare(item)

    async def compare(self, item: Offered) -> None:
        try:
            shadow = await self.engine.decide(item.input)
        except Exception as exc:  # a broken candidate is a finding, never a failure of the gateway
            shadow = Decision.failed(f"engine error: {exc}", getattr(self.engine, "revision", "unknown"))
        self._metrics.shadow_decisions.inc()
        if shadow.allow == item.live.allow:
            return
        self._metrics.count_shadow_disagreement(item.team, item.live.allow, shadow.allow)
        await self._recorder.shadow_disagreement(
            {
                "decision_id": item.decision_id,
                "agent": item.agent,
                "team": item.team,
                "action": item.action,
                "server": item.server,
                "tool": item.tool,
                "live": _summary(item.live),
                "shadow": _summary(shadow),
            }
        )

    async def load(self, why: str, path: Path | None = None) -> ReloadResult:
        """Compile and test the candidate at ``path`` (default: where it was read from) and decide with it from now
        on if both pass, as the live policy's reload does; a refused candidate is logged and the previous one
        keeps shadowing. Only the embedded engine reloads."""
        engine: Any = self.engine
        if not (hasattr(engine, "swap") and hasattr(engine, "compile")):
            return ReloadResult("unchanged", self.engine.revision)
        if path is None:
            path = engine.path
            self._seen = fingerprint(path)
        old = engine.revision
        policy, failure = await anyio.to_thread.run_sync(
            prepare, path, engine.decision_path, engine.compile, engine.name
        )
        if policy is None:
            assert failure is not None
            log.error(
                "shadow policy reload (%s) refused, %s keeps shadowing: %s\n  %s",
                why,
                old,
                failure.result,
                "\n  ".join(failure.details),
            )
            return ReloadResult(failure.result, old, failure.details)
        self.ready = True
        if policy.revision == old:
            return ReloadResult("unchanged", old)
        engine.swap(policy)
        log.info("shadow policy reload (%s): revision %s replaces %s", why, policy.revision, old)
        return ReloadResult("success", policy.revision)

    async def watch(
        self, interval_s: float, poll: bool, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Reload the candidate on SIGHUP (with the live policy), and when ``poll``, when its files change; a bundle
        candidate is polled from its server instead (SIGHUP polls at once)."""
        if self.bundles is not None:
            async with anyio.create_task_group() as tg:
                await tg.start(reload_on_sighup, self.bundles.poll_now, log, "shadow policy")
                task_status.started()
                await self.bundles.run(self.load)
            return
        path: Path = getattr(self.engine, "path", Path())
        self._seen = fingerprint(path)
        async with anyio.create_task_group() as tg:
            await tg.start(reload_on_sighup, self.load, log, "shadow policy")
            task_status.started()
            if poll:
                await reload_on_change(lambda: fingerprint(path), lambda: self._seen, interval_s, self.load)

    async def aclose(self) -> None:
        self._send.close()
        await self.engine.aclose()
