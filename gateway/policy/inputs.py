"""Which parts of the input document a policy can read, so the embedded engine hands it only those.

rego-cpp parses the input document afresh for every decision, at a cost per JSON node (about half of a decision
of the shipped policy for a 1 KB input). A policy that never mentions ``input.session`` cannot tell whether it
was sent, so leaving it out changes no decision. The shape is read from the source once per revision: every
``input.a`` or ``input.a.b`` reference keeps that field; any other use of ``input`` (``input[k]``, ``input`` as a
value, ``object.get(input, ...)``, ``import input``) keeps the whole document. The audit log still records the
whole input.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.policy.lint import mask
from gateway.policy.loader import PolicySource

InputShape = dict[str, frozenset[str] | None]
"""Top-level field -> the second-level fields read (None: all of it)."""

_INPUT = re.compile(r"(?<![\w.])input\b")
_IDENT = re.compile(r"[A-Za-z_]\w*")


def _field(masked: str, at: int) -> tuple[str | None, int]:
    """The identifier after ``.`` at ``at`` (and the offset after it), or None when ``at`` is not ``.ident``."""
    if at < len(masked) and masked[at] == ".":
        m = _IDENT.match(masked, at + 1)
        if m:
            return m.group(0), m.end()
    return None, at


def input_shape(source: PolicySource) -> InputShape | None:
    """The parts of ``input`` the policy can read, or None when it may read any part of it."""
    shape: dict[str, set[str] | None] = {}
    for text in source.modules.values():
        masked = mask(text)
        for m in _INPUT.finditer(masked):
            first, after = _field(masked, m.end())
            if first is None:
                return None
            second, _ = _field(masked, after)
            if second is None:
                shape[first] = None
            elif first not in shape:
                shape[first] = {second}
            elif (seen := shape[first]) is not None:
                seen.add(second)
    return {k: (frozenset(v) if v is not None else None) for k, v in shape.items()}


def prune(input: dict[str, Any], shape: InputShape | None) -> dict[str, Any]:
    if shape is None:
        return input
    out: dict[str, Any] = {}
    for key, fields in shape.items():
        if key not in input:
            continue
        value = input[key]
        if fields is None or not isinstance(value, dict):
            out[key] = value
        else:
            out[key] = {f: value[f] for f in fields if f in value}
    return out
