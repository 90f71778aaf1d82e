"""Built-in contained tools: ``transport = "builtin"`` upstreams with ``tools = "shell"`` or ``"files"``.

Every call runs in a fresh worker of the upstream's containment profile (a one-shot sandbox), with the agent's
workspace as its working directory; nothing of one call survives into the next except what it wrote to the
workspace. The upstream itself is served in the gateway: its tool list is static.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from connectors.builtin.files import FilesTools
from connectors.builtin.shell import ShellTools
from connectors.builtin.toolset import Toolset
from connectors.jsonrpc import ProgressFn, RemoteError, UpstreamError
from gateway.containment.profile import Profile, agent_key
from gateway.containment.runtime import Containment
from gateway.containment.scope import current_scope

log = logging.getLogger("gateway.builtin")

TOOLSETS: dict[str, type[Toolset]] = {"shell": ShellTools, "files": FilesTools}


class BuiltinUpstream:
    """Stands where a StdioConnector would: start/wait_ready/request/aclose, plus ``connector_for``."""

    def __init__(self, cfg: Any, runtime: Containment, on_state: Callable[[Any, bool], None]):
        self.cfg = cfg
        self.name: str = cfg.name
        self.runtime = runtime
        self.on_state = on_state
        self.profile_name: str = cfg.containment
        self.profile: Profile = runtime.profiles[self.profile_name]
        self.toolset = TOOLSETS[cfg.tools](cfg, runtime)
        self.capabilities: dict[str, Any] = {"tools": {"listChanged": False}}
        self.server_info: dict[str, Any] = {"name": f"builtin-{cfg.tools}", "version": "0.1.0"}
        self.on_notification: Any = None
        self.on_request: Any = None
        self.restarts = 0
        self.last_error = "not started"
        self._ready = anyio.Event()

    @property
    def up(self) -> bool:
        return self._ready.is_set()

    @property
    def tier(self) -> str:
        return self.profile.tier

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        await self.runtime.start(tg)
        need = self.runtime.missing(self.profile)
        if need:
            self.last_error = f"containment profile {self.profile_name!r} cannot be enforced here: {'; '.join(need)}"
            log.error("upstream %s: %s", self.name, self.last_error)
            return
        self.last_error = ""
        self._ready.set()
        self.on_state(self, True)

    async def wait_ready(self, timeout: float) -> bool:
        return self._ready.is_set()

    async def request(self, method: str, params: dict[str, Any] | None, timeout: float,
                      on_progress: ProgressFn | None = None) -> dict[str, Any]:
        if method == "tools/list":
            return {"tools": self.toolset.tools()}
        if method == "ping":
            return {}
        raise RemoteError(-32601, f"{method} is not offered by built-in {self.cfg.tools} tools")

    async def aclose(self) -> None:
        """Workers belong to the shared runtime, which the gateway closes after the catalog."""
        self._ready = anyio.Event()

    def connector_for(self, agent: Any, session_id: str | None) -> BuiltinConnection:
        return BuiltinConnection(self, agent_key(agent.id, agent.auth))


class BuiltinConnection:
    def __init__(self, upstream: BuiltinUpstream, agent: str):
        self.upstream = upstream
        self.agent = agent
        self.name = upstream.name

    async def request(self, method: str, params: dict[str, Any] | None, timeout: float,
                      on_progress: ProgressFn | None = None) -> dict[str, Any]:
        up = self.upstream
        if method != "tools/call":
            return await up.request(method, params, timeout, on_progress)
        params = params or {}
        name = str(params.get("name", ""))
        args = params.get("arguments") or {}
        if not isinstance(args, dict):
            raise RemoteError(-32602, "arguments must be an object")
        scope = current_scope()
        profile = up.runtime.effective(up.name, up.profile_name, scope.narrowing if scope is not None else None)
        try:
            result, run = await up.toolset.call(name, args, self.agent, profile, min(timeout, profile.timeout_s))
        except UpstreamError:
            raise
        if scope is not None and run is not None:
            scope.info.update({"tier": run.tier, "profile": run.profile, "worker": run.worker,
                               "narrowed": profile.narrowed})
            if run.kill_reason:
                scope.info["killed"] = run.kill_reason
        return result
