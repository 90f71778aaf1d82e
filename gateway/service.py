"""Builds a gateway from its configuration and runs its lifecycle (upstreams, MCP session managers)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings

from gateway import sdk_adapter, tracing
from gateway.audit import AuditLog
from gateway.bundles.poller import BundleSource
from gateway.catalog import Catalog
from gateway.config import Config
from gateway.decide import Decider, limits_from
from gateway.decisionlogs.shipper import Shipper
from gateway.fleet.config import default_replica_id
from gateway.frontend import build_server
from gateway.guard import GuardedTaskGroup
from gateway.identity import Authenticator
from gateway.identity_reload import IdentityWatcher
from gateway.integrity.guard import Integrity
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.policy import PolicyEngine
from gateway.policy.engines import open_engine
from gateway.policy.monitor import Monitor
from gateway.policy.reload import PolicyWatcher
from gateway.policy.shadow import open_shadow
from gateway.record import Recorder
from gateway.secrets import SecretScanning
from gateway.upstream_check import gateway_path

log = logging.getLogger("gateway")


class Gateway:
    def __init__(self, config: Config):
        self.config = config
        # stdio upstreams inherit this PATH: the set-up installs the demo upstreams next to the gateway itself
        os.environ["PATH"] = gateway_path()
        self.metrics = Metrics(config.metrics.max_agents, max_reasons=config.metrics.max_reasons)
        tracing.configure(config.tracing)
        self.auth = tracing.trace_auth(Authenticator(config.identity, config.base_dir))
        # [policy] bundle_url: the engine opens on the fallback or a deny-everything placeholder until a bundle is in
        self.bundles = BundleSource.from_config(config, self.metrics) if config.policy.bundle_url else None
        policy_cfg = self.bundles.initial_policy(config.policy) if self.bundles else config.policy
        self.engine: PolicyEngine = open_engine(policy_cfg, config)
        self.metrics.policy_revision.info({"revision": self.engine.revision})
        self.audit = AuditLog(
            config.resolve(config.audit.path),
            config.audit.fsync,
            config.audit.max_file_bytes,
            config.audit.keep_files,
            on_rotate=self.metrics.audit_rotations.inc,
        )
        self.containment: Any = None
        if config.containment is not None:
            from gateway.containment.runtime import Containment  # probes the host (a throw-away sandbox)

            self.containment = Containment(config.containment, config.base_dir, self.metrics)
            self.containment.log_report()
        self._first_attempt = {u.name: anyio.Event() for u in config.upstreams}
        """Set when an upstream first reports up or down: the start-up wait need not last its whole timeout."""
        self.decider = Decider(self.engine, self.metrics, limits_from(config.policy))
        self.replica_id = config.fleet.replica_id if config.fleet is not None else default_replica_id()
        self.recorder = Recorder(self.audit, self.metrics, config.audit.record_arguments, self.replica_id)
        self.shipper: Shipper | None = None  # [decision_logs]: the audit log shipped to a central sink
        if config.decision_logs is not None:
            audit_path = config.resolve(config.audit.path)
            self.shipper = Shipper(config.decision_logs, audit_path, config.base_dir, self.replica_id, self.metrics)
        integrity = config.integrity  # a lock that is set but missing or corrupt stops the start (LockError)
        self.integrity = Integrity(
            config.resolve(integrity.lock) if integrity.lock else None,
            integrity.on_drift,
            self.metrics,
            self.recorder.write_now,
            integrity.watch_interval_s,
        )
        self.catalog = Catalog(
            config.upstreams, config.base_dir, self._upstream_state, self.containment, self.integrity
        )
        self.pipeline = Pipeline(
            self.catalog, self.decider, self.recorder, self.metrics, SecretScanning(config.secrets)
        )
        # Rollout: monitor mode and the shadow policy live in the admission stage (gateway/admission.py).
        self.pipeline.admission.monitor = Monitor(config.policy.monitor)
        self.shadow = open_shadow(config, self.recorder, self.metrics)
        self.pipeline.admission.shadow = self.shadow
        self.servers: dict[str | None, Server[Any]] = {None: build_server(self.pipeline, None)}
        for up in config.upstreams:
            self.servers[up.name] = build_server(self.pipeline, up.name)
        # Host/Origin checks are done once, in the gateway's HTTP layer, before authentication.
        no_check = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        sdk_adapter.serve_standalone_streams()
        sdk_adapter.sieve_list_items_once()
        self.session_managers: dict[str | None, StreamableHTTPSessionManager] = {
            view: StreamableHTTPSessionManager(
                app=server,
                security_settings=no_check,
                max_request_body_size=config.server.max_request_bytes,
                session_idle_timeout=config.server.session_idle_timeout_s,
                max_sessions=config.server.max_sessions,
            )
            for view, server in self.servers.items()
        }
        for view, server in self.servers.items():
            sdk_adapter.attach_session_manager(server, self.session_managers[view])
            if tracing.enabled():
                sdk_adapter.drop_sdk_spans(server)
        self.fleet: Any = None
        if config.fleet is not None:
            from gateway.fleet.runtime import Fleet

            self.fleet = Fleet(config.fleet, config.base_dir, self.metrics)
        if config.limits:  # [[limits]]: one step of the admission stage, in Redis with [fleet]
            from gateway.fleet.runtime import build_limits

            self.pipeline.admission.limits = build_limits(config, self.fleet, self.metrics)
        self.started = False
        self.failure: str | None = None
        """Set when the gateway failed after start (its task group is gone): /healthz says so, the process exits."""

    def fail(self, reason: str) -> None:
        self.failure = reason

    def _upstream_state(self, name: str, up: bool) -> None:
        if name in self._first_attempt:
            self._first_attempt[name].set()
        self.metrics.upstream_up.labels(name).set(1 if up else 0)
        if not up and self.started:  # a stop at shutdown, or a failed first start, is not a restart
            self.metrics.upstream_restarts.labels(name).inc()
        log.info("upstream %s is %s", name, "up" if up else "down")

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            tg = await stack.enter_async_context(anyio.create_task_group())
            # Reloads the policy on change and SIGHUP, and keeps the revision metric true.
            await tg.start(PolicyWatcher(self.engine, self.metrics, self.config.policy, self.bundles).run)
            await tg.start(IdentityWatcher(self.auth, self.metrics, self.config).run)  # [identity]: the same
            if self.shadow is not None:
                await tg.start(self.shadow.run)
                # The candidate reloads as the live policy does: on SIGHUP, and on change when watched.
                await tg.start(self.shadow.watch, self.config.policy.watch_interval_s, self.config.policy.watch)
            await tg.start(self.integrity.run, self.catalog.relist)  # [integrity] lock: the same
            if self.shipper is not None:
                await tg.start(self.shipper.run)
            for manager in self.session_managers.values():
                await stack.enter_async_context(manager.run())
            # Upstreams start in a guarded group: one that fails (at start or later) is reported down in /readyz
            # and retried by its connector; it never stops the gateway serving the others.
            await self.catalog.start(GuardedTaskGroup(tg))  # type: ignore[arg-type]
            await self._wait_first_attempts()
            # Lists are fetched when an upstream comes up; give the first fetch a moment to land.
            with anyio.move_on_after(5):
                while any(u.conn.up and u.generation == 0 for u in self.catalog.upstreams.values()):
                    await anyio.sleep(0.02)
            if self.fleet is not None:  # joins once ready (heartbeat in Redis); leaves at shutdown
                await stack.enter_async_context(self.fleet.running(tg))
            self.started = True
            log.info("gateway ready: policy revision %s, upstreams %s", self.engine.revision, self.catalog.ready())
            try:
                yield
            finally:
                self.started = False
                await self.catalog.aclose()
                if self.containment is not None:
                    await self.containment.aclose()
                await self.engine.aclose()
                if self.shadow is not None:
                    await self.shadow.aclose()
                if self.shipper is not None:
                    await self.shipper.drain()
                tg.cancel_scope.cancel()
        self.audit.close()
        tracing.shutdown()

    async def _wait_first_attempts(self) -> None:
        """Serve once each upstream is up or has failed its first attempt, each waited for at most its own
        ``start_timeout_s`` (side by side): a missing program or an unreachable server does not hold the others'
        agents up for its whole timeout. Those still down are retried by their connectors meanwhile."""

        async def one(name: str, conn: Any, timeout: float) -> None:
            with anyio.move_on_after(timeout):
                async with anyio.create_task_group() as tg:

                    async def ready() -> None:
                        await conn.wait_ready(timeout)
                        tg.cancel_scope.cancel()

                    tg.start_soon(ready)
                    await self._first_attempt[name].wait()
                    tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            for up in self.catalog.upstreams.values():
                tg.start_soon(one, up.name, up.conn, up.config.start_timeout_s)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        ups = self.catalog.ready()
        ok = self.started and all(u["up"] for u in ups.values())
        detail = {"ready": ok, "policy_revision": self.engine.revision, "upstreams": ups}
        if self.containment is not None:
            detail["containment"] = self.containment.report()
        return ok, detail
