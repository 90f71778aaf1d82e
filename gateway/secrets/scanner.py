"""Find credentials in a JSON value (arguments, results) and redact them in place; never keep or log a value.

Cost model: every string of the value is joined once and the detectors' anchors are looked up in that blob; only
detectors whose anchor occurs run, and only on the strings that hold it. A value with no anchor at all (the
common case) costs one join and a few substring searches. Object keys that name a credential (``TOKEN``,
``api_key``, ``password``...) are context: a high-entropy string under one is a ``generic-secret``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.secrets.detectors import DETECTORS, SECRET_KEY_NAME, Detector, high_entropy

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    path: str
    """Where the secret sits, e.g. ``arguments.env.TOKEN``, ``arguments.items[2]``, ``result.content[0].text``."""
    where: str
    """``arguments`` or ``result``."""

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "path": self.path, "where": self.where}


@dataclass(frozen=True, slots=True)
class _Hit:
    kind: str
    start: int
    end: int


def _child(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = str(key)
    return f"{path}.{key}" if _IDENT.match(key) else f"{path}[{json.dumps(key)}]"


def _strings(value: Any, root: str) -> list[tuple[Any, Any, str, str, str | None]]:
    """Every string in ``value``: (container, key, its container's path, string, the object key it sits under).
    A string's own path is built only when it holds a finding (``_child``). Iterative: JSON from agents and
    upstreams may nest deeper than the recursion limit."""
    out: list[tuple[Any, Any, str, str, str | None]] = []
    if isinstance(value, str):
        return [(None, None, root, value, None)]
    stack: list[tuple[Any, str, str | None]] = [(value, root, None)]
    while stack:
        v, path, name = stack.pop()
        if isinstance(v, dict):
            for k, item in v.items():
                if isinstance(item, str):
                    out.append((v, k, path, item, str(k)))
                elif isinstance(item, (dict, list)):
                    stack.append((item, _child(path, k), str(k)))
        elif isinstance(v, list):
            for i, item in enumerate(v):
                if isinstance(item, str):
                    out.append((v, i, path, item, name))
                elif isinstance(item, (dict, list)):
                    stack.append((item, _child(path, i), name))
    return out


class Scanner:
    """The enabled detectors with their allow lists; stateless after construction, shared by all calls."""

    def __init__(
        self,
        detectors: Iterable[Detector] = DETECTORS,
        allow: Iterable[str] = (),
        allow_digests: Iterable[str] = (),
    ):
        self.detectors = tuple(detectors)
        self._plain = tuple((d, d.anchors) for d in self.detectors if not d.lower)
        self._lowered = tuple((d, d.anchors) for d in self.detectors if d.lower)
        self._gates = "".join(sorted({c for d in self.detectors for c in d.gate}))
        self.kinds = frozenset(d.kind for d in self.detectors)
        self._generic = "generic-secret" in self.kinds
        patterns = list(allow)
        self._allow = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        self._digests = frozenset(d.lower() for d in allow_digests)

    # --- text ----------------------------------------------------------------------------------------------

    def _active(self, blob: str) -> list[Detector]:
        present = {c for c in self._gates if c in blob}
        gated = [(d, anchors) for d, anchors in self._plain if not d.gate or any(c in present for c in d.gate)]
        active = [
            d
            for d, anchors in gated
            if (d.prefix.search(blob) is not None if d.prefix is not None else any(a in blob for a in anchors))
        ]
        lowered = [(d, anchors) for d, anchors in self._lowered if not d.gate or any(c in present for c in d.gate)]
        if lowered:
            low = blob.lower()
            active += [d for d, anchors in lowered if any(a in low for a in anchors)]
        return active

    def _allowed(self, value: str) -> bool:
        if self._allow is not None and self._allow.fullmatch(value):
            return True
        return (
            bool(self._digests) and hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest() in self._digests
        )

    def _hits(self, text: str, detectors: list[Detector]) -> list[_Hit]:
        hits: list[_Hit] = []
        low: str | None = None
        for d in detectors:
            hay = text
            if d.lower:
                low = _lowered(text) if low is None else low
                hay = low
            starts: set[int] = set()
            if d.prefix is not None:
                starts.update(m.start() - d.offset for m in d.prefix.finditer(hay))
            for a in d.anchors if d.prefix is None else ():
                i = hay.find(a)
                while i != -1:
                    starts.add(i - d.offset)
                    i = hay.find(a, i + 1)
            end = -1
            for start in sorted(starts):
                if start < 0 or start < end:
                    continue
                m = d.pattern.match(text, start)
                if m is None:
                    continue
                end = m.end()
                group = d.group if m.group(d.group) is not None else 0
                s, e = m.span(group)
                value = text[s:e]
                if d.check is not None and not d.check(value):
                    continue
                if self._allowed(value) or any(s < h.end and h.start < e for h in hits):
                    continue  # allowed, or a more specific detector (earlier in DETECTORS) has this span
                hits.append(_Hit(d.kind, s, e))
        return hits

    def find_in_text(self, text: str) -> list[tuple[str, int, int]]:
        """(kind, start, end) of each secret in one text; for tests and the benchmark."""
        return [(h.kind, h.start, h.end) for h in self._hits(text, self._active(text))]

    # --- JSON values ---------------------------------------------------------------------------------------

    def scan(self, value: Any, root: str, where: str, redact: bool = False) -> list[Finding]:
        """The findings in ``value`` (paths rooted at ``root``); with ``redact`` each secret is replaced in place
        by ``[redacted: KIND]`` (a bare string ``value`` cannot be changed in place: scan its container)."""
        if not self.detectors:
            return []
        strings = _strings(value, root)
        if not strings:
            return []
        active = self._active("\x00".join(s[3] for s in strings))
        keyed = self._generic and any(name is not None and SECRET_KEY_NAME.search(name) for *_, name in strings)
        if not active and not keyed:
            return []
        findings: list[Finding] = []
        seen: set[tuple[str, str]] = set()
        for container, key, parent, text, name in strings:
            hits = self._hits(text, active) if active else []
            if (
                not hits
                and self._generic
                and name is not None
                and SECRET_KEY_NAME.search(name)
                and high_entropy(text.strip())
                and not self._allowed(text.strip())
            ):
                hits = [_Hit("generic-secret", 0, len(text))]
            if not hits:
                continue
            path = parent if container is None else _child(parent, key)
            for h in hits:
                if (h.kind, path) not in seen:
                    seen.add((h.kind, path))
                    findings.append(Finding(h.kind, path, where))
            if redact and container is not None:
                container[key] = _redacted(text, hits)
        return findings


def _lowered(text: str) -> str:
    """``text`` in lower case, position for position (a character whose lower case is longer stays as it is)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(ch.lower() if len(ch.lower()) == 1 else ch for ch in text)


def _redacted(text: str, hits: list[_Hit]) -> str:
    out, pos = [], 0
    for h in sorted(hits, key=lambda h: h.start):
        out.append(text[pos : h.start])
        out.append(f"[redacted: {h.kind}]")
        pos = h.end
    out.append(text[pos:])
    return "".join(out)
