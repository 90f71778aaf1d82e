"""The answer of a built-in tool call is bounded as the agent receives it: serialized, not only as captured.

Captured output is cut at ``max_output_bytes``, but an answer carries it twice (text and structured copies) and
JSON escaping can grow a byte sixfold (a NUL becomes ``\\u0000``; an invalid UTF-8 byte becomes a three-byte
U+FFFD). So the strings that carry output are cut to fit a byte budget measured in their JSON encoding, and a
last check refuses any answer whose serialized form still exceeds ``max_answer_bytes``.
"""

from __future__ import annotations

from typing import Any

import orjson

ENVELOPE = 2048
"""Bytes reserved for the fixed parts of an answer (field names, exit code, flags, headings)."""


def json_len(value: Any) -> int:
    return len(orjson.dumps(value))


def fit(text: str, budget: int) -> tuple[str, bool]:
    """The longest prefix of ``text`` whose JSON encoding takes at most ``budget`` bytes, and whether it was cut."""
    if json_len(text) <= budget:
        return text, False
    lo, hi = 0, min(len(text), max(budget, 0))
    while lo < hi:  # the encoding of a prefix only grows with its length: binary search
        mid = (lo + hi + 1) // 2
        if json_len(text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo], True


def split_budget(texts: list[str], budget: int) -> list[int]:
    """Share ``budget`` between ``texts``: each gets an equal share, what one does not need goes to the others."""
    need = [json_len(t) for t in texts]
    out = [0] * len(texts)
    left = budget
    pending = sorted(range(len(texts)), key=lambda i: need[i])
    while pending:
        share = left // len(pending)
        i = pending.pop(0)
        out[i] = min(need[i], share)
        left -= out[i]
    return out


def _clean(value: Any) -> Any:
    """Lone surrogates (from file names that are not UTF-8) as U+FFFD: the answer must be serializable."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8") if not value.isascii() else value
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def bounded(result: dict[str, Any], limit: int) -> dict[str, Any]:
    """``result`` if its serialized form fits ``limit`` bytes, else an error answer that says so."""
    try:
        size = json_len(result)
    except TypeError:
        result = _clean(result)
        size = json_len(result)
    if size <= limit:
        return result
    text = (
        f"The answer ({size} bytes serialized) exceeds the gateway's limit of {limit} bytes "
        "(containment.max_answer_bytes): ask for less (a narrower path, a smaller max_bytes, fewer results)."
    )
    return {"content": [{"type": "text", "text": text}], "isError": True}
