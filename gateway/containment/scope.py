"""The containment side of one call: the policy's narrowing going in, the worker that served it coming out.

The pipeline opens a scope around the forward stage; the contained connector reads the narrowing and writes
the tier, profile and worker it used, which the pipeline then puts in the call's audit outcome. A context
variable keeps this off every signature between them (the forward stage knows nothing of containment).
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CallScope:
    """Used as ``with scope:`` around the forward stage of one call."""

    narrowing: Any = None
    """The decision's ``containment`` object (None: the configured profile as it is)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Filled by the contained connector: tier, profile, worker, and kill reason if the worker was stopped."""
    _tokens: list[Token[CallScope | None]] = field(default_factory=list, repr=False)

    def __enter__(self) -> CallScope:
        self._tokens.append(_current.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._tokens.pop())

    def audit(self) -> dict[str, Any]:
        """Extra fields for the call's audit outcome."""
        return {"containment": dict(self.info)} if self.info else {}


_current: ContextVar[CallScope | None] = ContextVar("containment_scope", default=None)


def current_scope() -> CallScope | None:
    return _current.get()


def is_contained(conn: Any) -> bool:
    return getattr(conn, "connector_for", None) is not None
