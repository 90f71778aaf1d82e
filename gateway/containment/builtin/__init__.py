"""Built-in contained tools: ``transport = "builtin"`` upstreams with ``tools = "shell"`` or ``"files"``.

Every call runs in a fresh worker of the upstream's containment profile (a one-shot sandbox), with the agent's
workspace as its working directory; nothing of one call survives into the next except what it wrote to the
workspace. The upstream itself is served in the gateway: its tool list is static.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from connectors.jsonrpc import ProgressFn, RemoteError
from gateway.containment.builtin.files import FilesTools
from gateway.containment.builtin.shell import ShellTools
from gateway.containment.builtin.toolset import Toolset
from gateway.containment.runtime import Containment
from gateway.containment.upstream import AgentConnectionBase, ContainedBase, report
from gateway.errors import INVALID_PARAMS, METHOD_NOT_FOUND

TOOLSETS: dict[str, type[Toolset]] = {"shell": ShellTools, "files": FilesTools}


class BuiltinConnection(AgentConnectionBase["BuiltinUpstream"]):
    async def request(
        self, method: str, params: dict[str, Any] | None, timeout: float, on_progress: ProgressFn | None = None
    ) -> dict[str, Any]:
        up = self.upstream
        if method != "tools/call":
            return await up.request(method, params, timeout, on_progress)
        params = params or {}
        name = str(params.get("name", ""))
        args = params.get("arguments") or {}
        if not isinstance(args, dict):
            raise RemoteError(INVALID_PARAMS, "arguments must be an object")
        profile, scope = up.call_profile()
        result, run = await up.toolset.call(name, args, self.agent, profile, min(timeout, profile.timeout_s))
        if run is not None:
            report(scope, run.tier, profile, run.worker, run.kill_reason)
        return result


class BuiltinUpstream(ContainedBase):
    """Stands where a StdioConnector would: start/wait_ready/request/aclose, plus ``connector_for``."""

    connection = BuiltinConnection

    def __init__(self, cfg: Any, runtime: Containment, on_state: Callable[[Any, bool], None]):
        super().__init__(cfg, runtime, on_state)
        self.toolset = TOOLSETS[cfg.tools](cfg, runtime)
        self.capabilities = {"tools": {"listChanged": False}}
        self.server_info = {"name": f"builtin-{cfg.tools}", "version": "0.1.0"}

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        if await self._start_runtime(tg):
            self.last_error = ""
            self._ready.set()
            self.on_state(self, True)

    async def wait_ready(self, timeout: float) -> bool:
        return self._ready.is_set()

    async def request(
        self, method: str, params: dict[str, Any] | None, timeout: float, on_progress: ProgressFn | None = None
    ) -> dict[str, Any]:
        if method == "tools/list":
            return {"tools": self.toolset.tools()}
        if method == "ping":
            return {}
        raise RemoteError(METHOD_NOT_FOUND, f"{method} is not offered by built-in {self.cfg.tools} tools")
