"""A contained stdio upstream as the catalog sees it, and the per-agent connection a call goes through.

The catalog needs the server's tool, prompt and resource lists before any agent calls: a worker under the
reserved identity ``_catalog`` (its own workspace and uid, same profile) answers those, and is reaped when
idle like any other. Calls go to the calling agent's own worker (``connector_for``), started on first use.
When a worker is stopped by a limit during ``tools/call``, the agent gets a tool error naming the limit
(the call happened and failed) rather than a protocol error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

import anyio
import anyio.abc

from connectors.jsonrpc import ProgressFn, UpstreamError
from gateway.containment.launcher import LaunchRequest
from gateway.containment.pool import WorkerKey
from gateway.containment.profile import Profile, agent_key
from gateway.containment.runtime import Containment
from gateway.containment.scope import CallScope, current_scope
from gateway.containment.worker import limit_text

log = logging.getLogger("gateway.containment")

CATALOG_AGENT = "_catalog"
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
"""Not a valid configured agent name (they start with a letter or digit), so no agent can be it."""


def text_result(text: str, structured: dict[str, Any] | None = None, error: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": error}
    if structured is not None:
        result["structuredContent"] = structured
    return result


class ContainedBase:
    """What contained stdio upstreams and the built-in tools share: the catalog's view of an upstream (start,
    readiness, refusal when its profile cannot be enforced here) and each call's effective profile."""

    def __init__(self, cfg: Any, runtime: Containment, on_state: Callable[[Any, bool], None]):
        self.cfg = cfg
        self.name: str = cfg.name
        self.runtime = runtime
        self.on_state = on_state
        self.profile_name: str = cfg.containment
        self.profile: Profile = runtime.profiles[self.profile_name]
        self.capabilities: dict[str, Any] = {}
        self.server_info: dict[str, Any] = {}
        self.client_capabilities: dict[str, Any] = {}
        self.on_notification: Any = None
        self.on_request: Any = None
        self.restarts = 0
        self.last_error = "not started"
        self._ready = anyio.Event()

    connection: ClassVar[type[AgentConnectionBase[Any]]]
    """What ``connector_for`` hands the forward stage: the calling agent's way into this upstream."""

    def connector_for(self, agent: Any, session_id: str | None) -> AgentConnectionBase[Any]:
        return self.connection(self, agent_key(agent.id, agent.auth))

    @property
    def up(self) -> bool:
        return self._ready.is_set()

    @property
    def tier(self) -> str:
        return self.profile.tier

    async def _start_runtime(self, tg: anyio.abc.TaskGroup) -> bool:
        """Start the shared runtime; False (and logged, and the reason kept) when the profile is refused here."""
        try:
            await self.runtime.start(tg)
        except Exception as exc:  # say, the egress proxy cannot listen: this upstream is down, the gateway serves
            self.last_error = f"containment runtime could not start: {exc.__class__.__name__}: {exc}"
            log.exception("upstream %s: containment runtime could not start", self.name)
            return False
        need = self.runtime.missing(self.profile)
        if need:
            self.last_error = f"containment profile {self.profile_name!r} cannot be enforced here: {'; '.join(need)}"
            log.error("upstream %s: %s", self.name, self.last_error)
            return False
        return True

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """No upstream-wide channel: each agent's worker is its own connection, told through its calls."""

    async def aclose(self) -> None:
        """Workers belong to the shared runtime, which the gateway closes after the catalog."""
        self._ready = anyio.Event()

    def call_profile(self) -> tuple[Profile, CallScope | None]:
        """The profile this call runs under (narrowed by its decision) and the scope to report the worker in."""
        scope = current_scope()
        return self.runtime.effective(self.name, self.profile_name, scope.narrowing if scope else None), scope


U = TypeVar("U", bound=ContainedBase)


class AgentConnectionBase(Generic[U]):
    """One agent's calls into a contained upstream: each runs under the agent's own key (workspace, uid)."""

    def __init__(self, upstream: U, agent: str):
        self.upstream = upstream
        self.agent = agent
        self.name = upstream.name


def report(scope: CallScope | None, tier: str, profile: Profile, worker: str, killed: str | None = None) -> None:
    """Put the worker that served the call in its audit outcome."""
    if scope is None:
        return
    scope.info.update({"tier": tier, "profile": profile.name, "worker": worker, "narrowed": profile.narrowed})
    if killed:
        scope.info["killed"] = killed


class AgentConnection(AgentConnectionBase["ContainedUpstream"]):
    """What ``Upstream.connector_for`` hands the forward stage for one contained call."""

    async def request(
        self, method: str, params: dict[str, Any] | None, timeout: float, on_progress: ProgressFn | None = None
    ) -> dict[str, Any]:
        up = self.upstream
        profile, scope = up.call_profile()
        try:
            w = await up._worker(self.agent, profile)
        except UpstreamError as exc:
            if not exc.detail.startswith("worker could not start"):
                raise  # say, no room for another worker: the agent may know
            # The detail names host paths and carries the server's own stderr: for the log, not for the agent.
            log.error("upstream %s: worker for agent %s: %s", up.name, self.agent, exc.detail)
            raise UpstreamError(up.name, "unavailable", "worker could not start (the gateway's log says why)") from None
        report(scope, profile.tier, profile, w.id)
        try:
            return await w.call(method, params, min(timeout, profile.timeout_s), on_progress)
        except UpstreamError as exc:
            reason = w.proc.kill_reason or (w.reason if w.done.is_set() else None)
            if reason is None and exc.kind not in ("timeout", "killed", "crashed"):
                raise
            reason = reason or ("timeout" if exc.kind == "timeout" else "crash")
            report(scope, profile.tier, profile, w.id, reason)
            text = limit_text(reason, profile, w.exit_code)
            if method != "tools/call":
                raise UpstreamError(up.name, "killed", f"worker stopped: {text}") from None
            return text_result(
                f"The tool's worker was stopped: {text}. A fresh worker serves the next call.", error=True
            )


class ContainedUpstream(ContainedBase):
    """Stands where a StdioConnector would: start/wait_ready/request/aclose, plus ``connector_for``."""

    connection = AgentConnection

    def __init__(self, cfg: Any, base_dir: Any, runtime: Containment, on_state: Callable[[Any, bool], None]):
        super().__init__(cfg, runtime, on_state)
        # relative to the config file (normalised: the sandbox only has the granted paths, not their parents)
        self.cwd = os.path.normpath(base_dir / cfg.cwd) if cfg.cwd and not cfg.cwd.startswith("{") else cfg.cwd
        self._refused = False
        self._tried = anyio.Event()
        """Set once the first start attempt has ended, either way."""

    def launch_request(self, agent: str, profile: Profile) -> LaunchRequest:
        assert self.cfg.command is not None
        return LaunchRequest(self.name, agent, profile, list(self.cfg.command), dict(self.cfg.env), self.cwd)

    async def _worker(self, agent: str, profile: Profile) -> Any:
        key = WorkerKey(self.name, agent, profile.digest)
        return await self.runtime.worker(
            key, self.launch_request(agent, profile), self.cfg.start_timeout_s, self._notified
        )

    async def _notified(self, method: str, params: dict[str, Any]) -> None:
        if self.on_notification is not None:
            await self.on_notification(method, params)

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._refused = not await self._start_runtime(tg)
        if not self._refused:
            tg.start_soon(self._first_contact)

    async def _first_contact(self) -> None:
        """Start the catalog's worker, retrying with backoff until it comes up (a missing program, a missing
        ``cwd``, a server that exits at once). The gateway serves meanwhile; /readyz names this upstream and why."""
        backoff = RETRY_FIRST_S
        while True:
            try:
                w = await self._worker(CATALOG_AGENT, self.profile)
            except UpstreamError as exc:
                self.last_error = exc.detail
            except Exception as exc:  # never let one upstream take the gateway's task group down
                self.last_error = f"worker could not start: {exc.__class__.__name__}"
                log.exception("upstream %s: worker could not start", self.name)
            else:
                self.capabilities = w.capabilities
                self.server_info = w.server_info
                self.last_error = ""
                self._ready.set()
                self._tried.set()
                self.on_state(self, True)
                return
            self._tried.set()
            log.error("upstream %s: %s; retrying in %.0f s", self.name, self.last_error, backoff)
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX_S)

    async def wait_ready(self, timeout: float) -> bool:
        """Up to ``timeout`` for the first start; False as soon as the first attempt has failed (retries go on)."""
        if self._refused:
            return False
        with anyio.move_on_after(timeout):
            await self._tried.wait()
        return self._ready.is_set()

    async def request(
        self, method: str, params: dict[str, Any] | None, timeout: float, on_progress: ProgressFn | None = None
    ) -> dict[str, Any]:
        """Catalog requests (lists), served by the catalog worker."""
        w = await self._worker(CATALOG_AGENT, self.profile)
        return await w.call(method, params, min(timeout, self.profile.timeout_s), on_progress)
