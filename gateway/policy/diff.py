"""``mcp-gateway policy diff``: what the shadow policy would change, summarised from the audit log.

Reads the ``shadow_disagreement`` records (gateway/policy/shadow.py) and groups them by direction (live allow,
shadow deny: what the candidate would newly deny; and the reverse), team, target and reason, with counts and a
few example decision ids to look up (``grep ID var/audit.jsonl``). A disagreement with several reasons counts
under each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.audit import audit_set, chain_order


@dataclass
class Row:
    live: str
    shadow: str
    team: str
    target: str
    reason: str
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class Summary:
    total: int = 0
    live_revisions: Counter[str] = field(default_factory=Counter)
    shadow_revisions: Counter[str] = field(default_factory=Counter)
    rows: dict[tuple[str, str, str, str, str], Row] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    def sorted_rows(self) -> list[Row]:
        return sorted(self.rows.values(), key=lambda r: (r.live, -r.count, r.team, r.target, r.reason))

    def as_json(self) -> dict[str, Any]:
        return {
            "disagreements": self.total,
            "live_revisions": dict(self.live_revisions),
            "shadow_revisions": dict(self.shadow_revisions),
            "rows": [r.__dict__ for r in self.sorted_rows()],
        }


def audit_files(paths: Iterable[Path]) -> list[Path]:
    """Each file with its rotated files, in chain order (as ``audit verify`` reads them)."""
    out: list[Path] = []
    for p in paths:
        for f in audit_set(p) or [p]:
            if f not in out:
                out.append(f)
    return chain_order(out)


def disagreements(files: list[Path], unreadable: list[str]) -> Iterator[dict[str, Any]]:
    for path in files:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                if b'"shadow_disagreement"' not in raw:
                    continue
                try:
                    rec = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    unreadable.append(f"{path}:{lineno}")
                    continue
                if isinstance(rec, dict) and rec.get("type") == "shadow_disagreement":
                    yield rec


def _target(rec: dict[str, Any]) -> str:
    server, tool = rec.get("server"), rec.get("tool")
    if server and tool:
        return f"{server}__{tool}"
    return f"{rec.get('action', '?')} {server or '/mcp'}"


def summarise(files: list[Path], examples: int = 3) -> Summary:
    s = Summary()
    for rec in disagreements(files, s.unreadable):
        live, shadow = rec.get("live") or {}, rec.get("shadow") or {}
        s.total += 1
        s.live_revisions[str(live.get("revision"))] += 1
        s.shadow_revisions[str(shadow.get("revision"))] += 1
        la = "allow" if live.get("allow") is True else "deny"
        sa = "allow" if shadow.get("allow") is True else "deny"
        denier = shadow if sa == "deny" else live  # the side that denies says why
        reasons = [str(r) for r in denier.get("reasons") or []] or ["(no reason given)"]
        for reason in reasons:
            key = (la, sa, str(rec.get("team")), _target(rec), reason)
            row = s.rows.get(key)
            if row is None:
                row = s.rows[key] = Row(*key)
            row.count += 1
            if len(row.examples) < examples:
                row.examples.append(str(rec.get("decision_id")))
    return s


def report(s: Summary) -> list[str]:
    """The summary as text: one block per direction, one line per team, target and reason."""
    if not s.total:
        return ["no shadow disagreements recorded"]
    lines = [
        f"{s.total} shadow disagreement(s); live revision(s) {', '.join(sorted(s.live_revisions))}; "
        f"shadow revision(s) {', '.join(sorted(s.shadow_revisions))}"
    ]
    heads = {
        ("allow", "deny"): "live allows, shadow would deny",
        ("deny", "allow"): "live denies, shadow would allow",
    }
    current: tuple[str, str] | None = None
    for row in s.sorted_rows():
        if (row.live, row.shadow) != current:
            current = (row.live, row.shadow)
            lines.append("")
            lines.append(f"{heads.get(current, f'live {row.live}, shadow {row.shadow}')}:")
        lines.append(f"  {row.count:>6}  team {row.team}  {row.target}  {row.reason}")
        lines.append(f"          e.g. {', '.join(row.examples)}")
    if s.unreadable:
        lines.append(f"({len(s.unreadable)} unreadable line(s), first {s.unreadable[0]})")
    return lines
