"""Policy coverage: the lines of the policy's rules that no test evaluated, per file and per rule.

Coverage is regorus's line coverage (``set_enable_coverage``), gathered over one interpreter that ran both the
Rego tests and every table test's input through the decision. A line counts as covered once it was evaluated; a
rule's head line only once the rule produced a value. A rule is covered when none of its lines is uncovered: for
a deny or grant rule that means some test made it fire. Test modules are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson
import regorus

from gateway.policy.loader import PolicySource
from gateway.policy.regotest import ModuleAst, Rule


def is_enforcing(rule: Rule) -> bool:
    """A rule that denies or grants: its coverage is the one the shipped policy must keep at 100 %."""
    name = rule.name.rpartition(".")[2]
    return rule.kind != "default" and (name.endswith("deny") or name.endswith("grants") or name == "allow")


@dataclass(frozen=True)
class FileCoverage:
    file: str
    where: str
    covered: tuple[int, ...]
    not_covered: tuple[int, ...]
    uncovered_rules: tuple[Rule, ...]

    @property
    def percent(self) -> float:
        total = len(self.covered) + len(self.not_covered)
        return 100.0 if total == 0 else 100.0 * len(self.covered) / total


@dataclass(frozen=True)
class Coverage:
    files: tuple[FileCoverage, ...]
    enforcing_total: int
    enforcing_covered: int

    @property
    def covered_lines(self) -> int:
        return sum(len(f.covered) for f in self.files)

    @property
    def not_covered_lines(self) -> int:
        return sum(len(f.not_covered) for f in self.files)

    @property
    def percent(self) -> float:
        total = self.covered_lines + self.not_covered_lines
        return 100.0 if total == 0 else 100.0 * self.covered_lines / total

    def as_json(self) -> dict[str, Any]:
        return {
            "files": {
                f.where: {
                    "covered": list(f.covered),
                    "not_covered": list(f.not_covered),
                    "coverage": math.floor(f.percent * 100) / 100,
                    "uncovered_rules": [{"rule": r.path, "line": r.line} for r in f.uncovered_rules],
                }
                for f in self.files
            },
            "covered_lines": self.covered_lines,
            "not_covered_lines": self.not_covered_lines,
            "coverage": math.floor(self.percent * 100) / 100,
            "deny_and_grant_rules": {"total": self.enforcing_total, "covered": self.enforcing_covered},
        }


def measure(engine: regorus.Engine, source: PolicySource, modules: list[ModuleAst]) -> Coverage:
    """The coverage gathered so far by ``engine`` (coverage enabled), for the policy's own modules."""
    report = orjson.loads(engine.get_coverage_report_as_json())
    by_file = {f["path"]: f for f in report.get("files", [])}
    rules = {m.file: m.rules for m in modules}
    files = []
    total = covered = 0
    for name in sorted(source.modules):
        f = by_file.get(name, {})
        missing = set(f.get("not_covered", []))
        if not missing and not f.get("covered"):  # regorus leaves out a module no test reached: all of it is missed
            missing = {n for r in rules.get(name, []) for n in r.lines}
        uncovered = tuple(r for r in rules.get(name, []) if any(r.line <= n <= r.end_line for n in missing))
        for r in rules.get(name, []):
            if is_enforcing(r):
                total += 1
                covered += r not in uncovered
        files.append(
            FileCoverage(
                name,
                source.where(name),
                tuple(sorted(f.get("covered", []))),
                tuple(sorted(missing)),
                uncovered,
            )
        )
    return Coverage(tuple(files), total, covered)


def shown(percent: float) -> str:
    """A percentage rounded down to a tenth: 99.97 % shows as 99.9, never as a 100.0 that failed a threshold."""
    return f"{math.floor(percent * 10) / 10:.1f}%"


def _ranges(lines: tuple[int, ...]) -> str:
    out: list[str] = []
    start = prev = None
    for n in lines:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = n
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(out)


def report(cov: Coverage) -> list[str]:
    """Per file: the share of lines covered and the lines and rules no test exercised; then the totals."""
    lines = ["coverage (lines a table test or a Rego test evaluated):"]
    for f in cov.files:
        total = len(f.covered) + len(f.not_covered)
        line = f"  {f.where}: {shown(f.percent)} ({len(f.covered)}/{total} lines)"
        if f.not_covered:
            line += f"; not covered: lines {_ranges(f.not_covered)}"
        lines.append(line)
        for r in f.uncovered_rules:
            what = "never fired" if is_enforcing(r) else "not fully evaluated"
            lines.append(f"      {r.name} at {f.where}:{r.line}: {what}")
    lines.append(
        f"total: {shown(cov.percent)} ({cov.covered_lines}/{cov.covered_lines + cov.not_covered_lines} lines); "
        f"deny and grant rules: {cov.enforcing_covered}/{cov.enforcing_total} covered"
    )
    return lines
