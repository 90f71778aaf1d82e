"""Compare what an upstream lists with its lock: which items are locked, changed, unlocked, shadowing or removed.

One comparison for the gateway (at start and on every re-list) and for ``mcp-gateway lock --check``, so CI and
the running gateway never disagree on what drifted.
"""

from __future__ import annotations

import difflib
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.integrity.definitions import ITEM_KIND, canonical, digest, item_key
from gateway.integrity.lockfile import Entry

MAX_DIFF_CHARS = 8000
"""A diff longer than this is cut (an upstream can send a description of any length; the audit record is bounded)."""


@dataclass(frozen=True)
class Drift:
    server: str
    kind: str
    """The lock's section: ``tools``, ``prompts``, ``resource_templates``."""
    name: str
    drift: str
    """``changed`` (locked, different now), ``unlocked`` (not in the lock), ``shadow`` (not in the lock, and named
    like another server's tool or a locked one), ``removed`` (locked, no longer listed)."""
    digest: str | None
    locked_digest: str | None
    fields: tuple[str, ...] = ()
    """For ``changed``: the pinned fields that differ (description, inputSchema, annotations...)."""
    diff: str = ""
    shadows: str | None = None
    """For ``shadow``: ``server/name`` of the item it is named like."""

    def record(self) -> dict[str, Any]:
        """The fields an audit record and ``/readyz`` carry."""
        out: dict[str, Any] = {
            "server": self.server,
            "item_kind": ITEM_KIND[self.kind],
            "name": self.name,
            "drift": self.drift,
            "digest": self.digest,
            "locked_digest": self.locked_digest,
        }
        if self.fields:
            out["fields"] = list(self.fields)
        if self.shadows:
            out["shadows"] = self.shadows
        return out

    def text(self) -> str:
        """Human-readable: a headline, then the diff."""
        what = {
            "changed": f"changed ({', '.join(self.fields)})",
            "unlocked": "not in the lock",
            "shadow": f"not in the lock, and named like {self.shadows}",
            "removed": "locked but no longer listed",
        }[self.drift]
        head = f"{self.server}: {ITEM_KIND[self.kind]} {self.name}: {what}"
        return head + ("\n" + self.diff if self.diff else "")


@dataclass
class Compared:
    served: dict[str, tuple[dict[str, Any], str, bool]] = field(default_factory=dict)
    """key -> (item, digest, locked) for every item listed, in list order."""
    drifts: list[Drift] = field(default_factory=list)


def fold(name: str) -> str:
    """A name as a reader sees it: NFKC, case-folded, separators dropped (``Read-File`` is ``read_file``)."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(ch for ch in folded if ch.isalnum())


def compare(
    server: str,
    kind: str,
    items: list[dict[str, Any]],
    locked: dict[str, Entry] | None,
    others: dict[str, str] | None = None,
) -> Compared:
    """``items`` (as listed) against ``locked`` (None: no lock at all, nothing drifts). ``others``: folded name ->
    ``server/name`` of the same kind's items elsewhere (other servers' listed and locked items, this server's
    locked ones), for shadowing."""
    out = Compared()
    for item in items:
        key = item_key(kind, item)
        if key is None or key in out.served:
            continue
        definition = canonical(kind, item)
        d = digest(definition)
        entry = None if locked is None else locked.get(key)
        out.served[key] = (item, d, entry is not None and entry.digest == d)
        if locked is None or (entry is not None and entry.digest == d):
            continue
        if entry is not None:
            fields, diff = describe(entry.definition, definition)
            out.drifts.append(Drift(server, kind, key, "changed", d, entry.digest, fields, diff))
            continue
        twin = (others or {}).get(fold(key))
        if twin is not None and twin != f"{server}/{key}":
            out.drifts.append(Drift(server, kind, key, "shadow", d, None, shadows=twin))
        else:
            out.drifts.append(Drift(server, kind, key, "unlocked", d, None))
    for key, entry in (locked or {}).items():
        if key not in out.served:
            out.drifts.append(Drift(server, kind, key, "removed", None, entry.digest))
    return out


def describe(old: dict[str, Any], new: dict[str, Any]) -> tuple[tuple[str, ...], str]:
    """The pinned fields that differ, and a unified diff of each (text as text, the rest as indented JSON)."""
    fields = tuple(sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)))
    parts: list[str] = []
    for f in fields:
        a, b = _lines(old.get(f)), _lines(new.get(f))
        parts.extend(difflib.unified_diff(a, b, f"locked {f}", f"listed {f}", lineterm="", n=2))
    diff = "\n".join(parts)
    if len(diff) > MAX_DIFF_CHARS:
        diff = diff[:MAX_DIFF_CHARS] + f"\n[diff cut at {MAX_DIFF_CHARS} characters]"
    return fields, diff


def _lines(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.splitlines() or [""]
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode().splitlines()


def compare_all(lock: Any, listings: dict[str, dict[str, list[dict[str, Any]]]]) -> list[Drift]:
    """Every drift of ``listings`` (server -> section -> items) against ``lock``, as the gateway would find it with
    all of them listed (``mcp-gateway lock --check``)."""
    from gateway.integrity.definitions import KINDS, item_key

    drifts: list[Drift] = []
    for kind in KINDS:
        for server in sorted(listings):
            others: dict[str, str] = {}
            for s, sections in sorted(lock.servers.items()):
                for name in sections.get(kind, {}):
                    others.setdefault(fold(name), f"{s}/{name}")
            for s, listing in sorted(listings.items()):
                if s != server:
                    for item in listing.get(kind, []):
                        key = item_key(kind, item)
                        if key is not None:
                            others.setdefault(fold(key), f"{s}/{key}")
            items = listings[server].get(kind, [])
            drifts.extend(compare(server, kind, items, lock.entries(server, kind), others).drifts)
    return sorted(drifts, key=lambda d: (d.server, d.kind, d.name))
