"""The decision document and the engine interface every policy engine implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class PolicyError(Exception):
    """A policy that cannot be loaded; ``errors`` holds one ``file:line:col: message`` line each."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    reasons: tuple[str, ...]
    revision: str
    result: dict[str, Any] = field(default_factory=dict)
    """The whole decision document the policy returned (extra fields such as ``containment`` live here)."""
    error: str | None = None
    """Why the engine failed; a decision with an error never allows."""
    engine_decision_id: str | None = None
    monitor: str | None = None
    """Set by the admission stage when this denial is let through in monitor mode: what put it there (the policy's
    ``mode: "monitor"`` or a ``[[policy.monitor]]`` entry). None: the decision is enforced."""

    @classmethod
    def from_result(cls, result: Any, revision: str, engine_decision_id: str | None = None) -> Decision:
        """Validate a raw policy result; anything but ``{allow: bool, reasons: [str]}`` denies."""
        if not isinstance(result, dict):
            kind = "undefined" if result is None else type(result).__name__
            return cls.failed(f"policy returned {kind}, not a decision object", revision)
        allow = result.get("allow")
        reasons = result.get("reasons", [])
        if not isinstance(allow, bool):
            return cls.failed("policy decision has no boolean 'allow'", revision)
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            return cls.failed("policy decision 'reasons' is not a list of strings", revision)
        return cls(allow, tuple(sorted(reasons)), revision, result, None, engine_decision_id)

    @classmethod
    def failed(cls, error: str, revision: str) -> Decision:
        return cls(False, ("policy evaluation failed",), revision, {}, error)


class PolicyEngine(Protocol):
    @property
    def revision(self) -> str: ...

    async def decide(self, input: dict[str, Any]) -> Decision: ...

    async def aclose(self) -> None: ...
