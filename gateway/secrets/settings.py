"""``[secrets]``: which detectors run where, what a finding in a result does, and the known false positives.

A false positive is fixed without turning scanning off: allow the value (a pattern or the sha256 of the value),
switch one kind off, or override any of it for one server or tool (``[[secrets.overrides]]``); a finding in
arguments can also be allowed by policy (docs/integrity.md).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.secrets.detectors import KINDS

_DIGEST = r"^[0-9a-f]{64}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _kinds(v: dict[str, bool]) -> dict[str, bool]:
    unknown = sorted(set(v) - KINDS)
    if unknown:
        raise ValueError(f"unknown detector {', '.join(unknown)} (known: {', '.join(sorted(KINDS))})")
    return v


def _patterns(v: list[str]) -> list[str]:
    for p in v:
        try:
            re.compile(p)
        except re.error as exc:
            raise ValueError(f"allow pattern {p!r} is not a valid regular expression: {exc}") from None
    return v


class SecretsOverride(_Model):
    """Settings for the calls whose server and tool (prompt name, resource URI) match these globs."""

    server: str = "*"
    tool: str = "*"
    scan_arguments: bool | None = None
    scan_results: bool | None = None
    on_result: Literal["redact", "withhold"] | None = None
    kinds: dict[str, bool] = {}
    allow: list[str] = []
    allow_digests: list[Annotated[str, Field(pattern=_DIGEST)]] = []

    _check_kinds = field_validator("kinds")(_kinds)
    _check_allow = field_validator("allow")(_patterns)


class SecretsConfig(_Model):
    scan_arguments: bool = True
    """Scan every tools/call's (and prompts/get's) arguments before the decision: findings go to input.findings."""
    scan_results: bool = True
    """Scan every result (tools, prompts, resource reads, completions) before it reaches the agent."""
    on_result: Literal["redact", "withhold"] = "redact"
    """A finding in a result: ``redact`` replaces the secret with ``[redacted: KIND]``; ``withhold`` answers an
    error instead of the result."""
    kinds: dict[str, bool] = {}
    """Detectors switched on (true) or off (false) by kind; all are on by default."""
    allow: list[str] = []
    """Regular expressions a found value may match whole to be no finding (known test keys, fixtures)."""
    allow_digests: list[Annotated[str, Field(pattern=_DIGEST)]] = []
    """sha256 (hex, of the UTF-8 value) of exact values that are no finding: allows a value without writing it."""
    overrides: list[SecretsOverride] = []
    """Per server/tool settings, applied in order over the ones above (later ones win; allow lists add up)."""

    _check_kinds = field_validator("kinds")(_kinds)
    _check_allow = field_validator("allow")(_patterns)
