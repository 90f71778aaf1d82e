"""What the policy can see whole: the bounds an argument value must keep to before the engine is asked.

The policy must decide on exactly what is forwarded. The gateway used to trim long strings, long lists and deep
nesting for the policy while forwarding the untrimmed value, so a deny rule was bypassed by padding. Now a value
the policy cannot see whole, or that an engine would read otherwise than the upstream, is refused before the
engine, with a reason: too many bytes, too long a string, too many keys or list items, too deep; an integer
outside 64 bits (engines and upstreams disagree past it); a float that is not finite, is subnormal, or carries
more significant digits than rego-cpp keeps (``100.00000000000001`` would read as ``100``); a string holding
U+0000 (rego-cpp cuts it there) or a lone surrogate (not UTF-8, so not forwardable as it is).

One walk, O(size), in Python, bounded as it goes: the first excess stops it, so a 100,000-key object costs no
more than the first ``max_keys`` keys.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from typing import Any

REFUSED = "arguments exceed what the policy can see"

_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1
_FLOAT_DIGITS = 15
"""Significant digits rego-cpp keeps exactly (measured: 16 and 17-digit values are rounded, so 100.00000000000001
compares equal to 100)."""

_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = 262_144
    max_string: int = 65_536
    max_keys: int = 1_000
    max_items: int = 1_000
    max_depth: int = 32


@dataclass(slots=True)
class _Walk:
    limits: Limits
    root: str
    size: int = 0
    keys: int = 0
    items: int = 0


class Refused(Exception):
    """Why a value cannot be handed to the policy whole (the reason names the bound and where it was hit)."""

    def __init__(self, detail: str):
        super().__init__(f"{REFUSED}: {detail}")
        self.reason = f"{REFUSED}: {detail}"


def _where(w: _Walk, path: list[str | int]) -> str:
    out = w.root
    for p in path[:6]:
        out += f"[{p}]" if isinstance(p, int) else f".{p[:40]}"
    return out + ("..." if len(path) > 6 else "")


def _string(w: _Walk, s: str, path: list[str | int]) -> None:
    lim = w.limits
    if len(s) > lim.max_string:
        raise Refused(f"{_where(w, path)} is a string of {len(s)} characters (max_argument_string = {lim.max_string})")
    w.size += len(s) + 2
    if w.size > lim.max_bytes:
        raise Refused(f"more than {lim.max_bytes} bytes (max_argument_bytes)")
    if "\x00" in s:
        raise Refused(f"{_where(w, path)} holds U+0000, which the policy engine cannot read as it is")
    if not s.isascii():
        bad = _SURROGATE.search(s)
        if bad is not None:
            raise Refused(
                f"{_where(w, path)} holds a lone surrogate U+{ord(bad.group()):04X}, which the policy "
                "engine cannot read as it is"
            )
        w.size += len(s.encode("utf-8")) - len(s)
        if w.size > lim.max_bytes:
            raise Refused(f"more than {lim.max_bytes} bytes (max_argument_bytes)")


def _number(w: _Walk, v: int | float, path: list[str | int]) -> None:
    if isinstance(v, int):
        if not _INT_MIN <= v <= _INT_MAX:
            raise Refused(f"{_where(w, path)} is an integer outside 64 bits, which the policy engines read differently")
        w.size += 20
        return
    if not math.isfinite(v):
        raise Refused(f"{_where(w, path)} is not a finite number")
    if v != 0 and abs(v) < sys.float_info.min:
        raise Refused(f"{_where(w, path)} is a subnormal number, which the policy engine cannot read")
    if float(f"{v:.{_FLOAT_DIGITS}g}") != v:
        raise Refused(
            f"{_where(w, path)} = {v!r} has more than {_FLOAT_DIGITS} significant digits (more than the policy engine"
            " keeps)"
        )
    w.size += 24


def _walk(w: _Walk, v: Any, depth: int, path: list[str | int]) -> None:
    lim = w.limits
    if isinstance(v, str):
        _string(w, v, path)
    elif v is None or isinstance(v, bool):
        w.size += 5
    elif isinstance(v, (int, float)):
        _number(w, v, path)
    elif isinstance(v, dict):
        if depth >= lim.max_depth:
            raise Refused(f"nested deeper than {lim.max_depth} levels (max_argument_depth)")
        w.keys += len(v)
        if w.keys > lim.max_keys:
            raise Refused(f"more than {lim.max_keys} object keys in all (max_argument_keys)")
        w.size += 2
        for k, item in v.items():
            if not isinstance(k, str):
                raise Refused(f"{_where(w, path)} has a key that is not a string")
            path.append(k)
            _string(w, k, path)
            _walk(w, item, depth + 1, path)
            path.pop()
    elif isinstance(v, (list, tuple)):
        if depth >= lim.max_depth:
            raise Refused(f"nested deeper than {lim.max_depth} levels (max_argument_depth)")
        w.items += len(v)
        if w.items > lim.max_items:
            raise Refused(f"more than {lim.max_items} list items in all (max_argument_items)")
        w.size += 2
        for i, item in enumerate(v):
            path.append(i)
            _walk(w, item, depth + 1, path)
            path.pop()
    else:
        raise Refused(f"{_where(w, path)} is not a JSON value ({type(v).__name__})")


def check(value: Any, limits: Limits, root: str = "arguments") -> None:
    """Raise Refused when the policy cannot see ``value`` whole, or an engine would read it otherwise; ``root``
    names the value in the reason."""
    _walk(_Walk(limits, root), value, 0, [])
