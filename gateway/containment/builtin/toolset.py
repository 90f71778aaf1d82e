"""What a built-in tool set provides: its tool definitions and a way to run one call in a fresh worker."""

from __future__ import annotations

from typing import Any

from connectors.jsonrpc import RemoteError
from gateway.containment.profile import Profile
from gateway.containment.runtime import Containment, RunResult
from gateway.containment.upstream import text_result
from gateway.errors import INVALID_PARAMS

__all__ = ["Toolset", "arg", "only", "text_result"]


def arg(
    args: dict[str, Any], name: str, kind: type | tuple[type, ...], required: bool = False, minimum: int | None = None
) -> Any:
    """One argument, checked as the tool's input schema says (the gateway does not validate schemas itself)."""
    value = args.get(name)
    if value is None:
        if required:
            raise RemoteError(INVALID_PARAMS, f"argument {name!r} is required")
        return None
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise RemoteError(INVALID_PARAMS, f"argument {name!r} must be a number")
    if not isinstance(value, kind):
        raise RemoteError(INVALID_PARAMS, f"argument {name!r} has the wrong type")
    if minimum is not None and isinstance(value, (int, float)) and value < minimum:
        raise RemoteError(INVALID_PARAMS, f"argument {name!r} must be at least {minimum}")
    return value


def only(args: dict[str, Any], names: Any) -> None:
    """Refuse arguments the tool does not have (its schema says additionalProperties: false)."""
    unknown = sorted(set(args) - set(names))
    if unknown:
        raise RemoteError(INVALID_PARAMS, f"unknown argument(s): {', '.join(map(repr, unknown))}")


class Toolset:
    def __init__(self, cfg: Any, runtime: Containment):
        self.cfg = cfg
        self.runtime = runtime
        self.output_limit = runtime.cfg.max_output_bytes
        self.answer_limit: int = runtime.cfg.answer_limit

    def workspace_full(self, agent: str, enospc: bool = False) -> str | None:
        """A sentence for the answer when the agent's workspace quota is (nearly) used up, or a write of the call
        failed with ENOSPC (``enospc``: a large write can fail while some room is left), else None."""
        usage = self.runtime.workspaces.usage(agent)
        if usage is None or (not enospc and usage[1] - usage[0] > max(64 * 1024, usage[1] // 20)):
            return None
        return (
            f"workspace full: {usage[0] // 1024} KiB of the {usage[1] // 1024} KiB quota "
            "(containment.max_workspace_mb) are used; writes fail with 'No space left on device'"
        )

    def tools(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def call(
        self, name: str, args: dict[str, Any], agent: str, profile: Profile, timeout: float
    ) -> tuple[dict[str, Any], RunResult | None]:
        raise NotImplementedError
