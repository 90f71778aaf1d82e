"""Policy tests as tables: ``*_test.yaml`` (or ``.json``) files of input -> expected decision.

A table tests a policy the way the gateway uses it: each case's input goes through the compiled decision on the
configured engine, and the result is compared with what the case expects (Rego tests of single rules and helpers,
``*_test.rego``, run beside them: gateway/policy/regotest.py). A file looks like::

    defaults:                       # merged under every case's input
      agent: {id: ci-bot, team: platform, roles: [ci]}
      action: tools/call
    cases:
      - name: ci may read the time
        input: {server: time, tool: get_current_time, arguments: {timezone: UTC}}
        allow: true
      - name: research may not convert
        input: {agent: {team: research, roles: []}, server: time, tool: convert_time}
        allow: false
        reasons: [research agents may not use convert_time]    # exactly these; reasons_include: at least these
      - name: research reads papers read-only
        input: {agent: {team: research}, server: files, tool: read_file, arguments: {path: papers/a.pdf}}
        result: {containment: {read_only: true}}                 # a subset of the decision document

Inputs are completed with the fields the gateway always sends (``INPUT_SKELETON``), so ``input.tool == null``
holds in a test exactly as it does in production; and a tool's annotations are those its upstream declares (the
policy's cached catalogue, or the config's built-in upstreams: gateway/policy/catalogue.py) unless the case sets
``annotations`` itself, so a rule on ``destructiveHint`` is tested on what the gateway will pass it.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from gateway.policy.decision import Decision, PolicyError
from gateway.policy.loader import PolicySource, parse_document

DEFAULT_TIME_NS = 1_793_613_600_000_000_000
"""2026-11-02T10:00:00Z, a Monday morning: the request time of a case that does not set one."""

INPUT_SKELETON: dict[str, Any] = {
    "agent": {"id": "test-agent", "team": None, "roles": [], "auth": "api_key", "claims": {}},
    "action": "tools/call",
    "server": None,
    "tool": None,
    "arguments": None,
    "annotations": {},
    "resource": None,
    "prompt": None,
    "session": {"id": None, "client": {}, "protocol_version": None},
    "request": {"id": None, "time_ns": DEFAULT_TIME_NS, "remote_addr": None},
    "integrity": None,
}
"""The shape of the input document the gateway builds (gateway.decide.Decider.build_input); see docs/policy.md."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TableCase(_Strict):
    name: str
    input: dict[str, Any] = {}
    allow: bool | None = None
    reasons: list[str] | None = None
    reasons_include: list[str] | None = None
    result: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _expects_something(self) -> TableCase:
        if self.allow is None and self.reasons is None and self.reasons_include is None and self.result is None:
            raise ValueError("a case must expect something: allow, reasons, reasons_include or result")
        return self


class TableFile(_Strict):
    defaults: dict[str, Any] = {}
    cases: list[TableCase]


@dataclass(frozen=True)
class Case:
    file: str
    name: str
    input: dict[str, Any]
    spec: TableCase

    @property
    def label(self) -> str:
        return f"{self.file}: {self.name}"


@dataclass(frozen=True)
class CaseResult:
    case: Case
    decision: Decision
    problems: tuple[str, ...]
    diff: str

    @property
    def ok(self) -> bool:
        return not self.problems


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge (objects merge key by key; anything else in ``over`` replaces)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def complete_input(partial: dict[str, Any]) -> dict[str, Any]:
    return merge(INPUT_SKELETON, partial)


def _loc(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top level)"


_TOOL_ACTIONS = frozenset({"tools/call", "tools/list"})


def declared_annotations(inp: dict[str, Any], catalogue: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The input with the annotations the tool's upstream declares, as the gateway would put them in it."""
    if inp.get("action") not in _TOOL_ACTIONS or not isinstance(inp.get("server"), str):
        return inp
    declared = catalogue.get(inp["server"], {}).get(inp.get("tool") or "")
    if declared is None:
        return inp
    return {**inp, "annotations": copy.deepcopy(declared)}


def parse_table(where: str, text: str, catalogue: dict[str, dict[str, dict[str, Any]]] | None = None) -> list[Case]:
    """One table file's cases; PolicyError with ``file: key: problem`` lines when it is malformed.

    A case that does not set ``annotations`` (nor its file's defaults) gets those of the ``catalogue``."""
    try:
        doc = parse_document(where, text)
    except Exception as exc:
        raise PolicyError([f"{where}: cannot parse: {exc}"]) from None
    try:
        table = TableFile.model_validate(doc)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            errors.append(f"{where}: {_loc(err['loc'])}: {msg}")
        raise PolicyError(errors) from None
    base = complete_input(table.defaults)
    cases = []
    for c in table.cases:
        inp = merge(base, c.input)
        if catalogue and "annotations" not in table.defaults and "annotations" not in c.input:
            inp = declared_annotations(inp, catalogue)
        cases.append(Case(where, c.name, inp, c))
    return cases


def load_tables(source: PolicySource, catalogue: dict[str, dict[str, dict[str, Any]]] | None = None) -> list[Case]:
    """Every table of the policy; tools' annotations from the policy's catalogue, then ``catalogue`` (a config's
    built-in upstreams), unless a case sets them."""
    known = {**source.catalogue, **(catalogue or {})}
    cases: list[Case] = []
    errors: list[str] = []
    for name in sorted(source.tests):
        try:
            cases.extend(parse_table(source.where(name), source.tests[name], known))
        except PolicyError as exc:
            errors.extend(exc.errors)
    if errors:
        raise PolicyError(errors)
    return cases


def _subset(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and _subset(v, actual[k]) for k, v in expected.items())
    return bool(expected == actual)


def _pretty(doc: dict[str, Any]) -> list[str]:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode().splitlines()


def check(case: Case, decision: Decision) -> CaseResult:
    spec = case.spec
    actual: dict[str, Any] = {"allow": decision.allow, "reasons": sorted(decision.reasons)}
    expected: dict[str, Any] = {}
    problems = []
    if decision.error:
        problems.append(f"evaluation failed: {decision.error}")
        actual["error"] = decision.error
    if spec.allow is not None:
        expected["allow"] = spec.allow
        if spec.allow != decision.allow:
            problems.append(f"allow is {str(decision.allow).lower()}, expected {str(spec.allow).lower()}")
    if spec.reasons is not None:
        expected["reasons"] = sorted(spec.reasons)
        if sorted(set(spec.reasons)) != sorted(set(decision.reasons)):
            problems.append("reasons differ")
    elif spec.reasons_include is not None:
        missing = [r for r in spec.reasons_include if r not in decision.reasons]
        expected["reasons"] = sorted(set(decision.reasons) | set(spec.reasons_include))
        if missing:
            problems.append("missing reasons: " + "; ".join(missing))
    else:
        expected["reasons"] = actual["reasons"]
    if spec.result is not None:
        for key, want in spec.result.items():
            got = decision.result.get(key)
            expected[key] = want
            actual[key] = got
            if not _subset(want, got):
                problems.append(f"result.{key} differs")
    diff = ""
    if problems:
        lines = difflib.unified_diff(_pretty(expected), _pretty(actual), "expected", "actual", lineterm="", n=20)
        diff = "\n".join(lines)
    return CaseResult(case, decision, tuple(problems), diff)


def run_cases(cases: Iterable[Case], decide: Callable[[dict[str, Any]], Decision]) -> list[CaseResult]:
    return [check(c, decide(c.input)) for c in cases]


async def run_cases_async(
    cases: Iterable[Case], decide: Callable[[dict[str, Any]], Awaitable[Decision]]
) -> list[CaseResult]:
    return [check(c, await decide(c.input)) for c in cases]


def report(results: list[CaseResult], verbose: bool = True) -> tuple[list[str], int]:
    """Lines to print (PASS/FAIL per case, a diff under each failure, a total) and the number of failures."""
    lines = []
    failed = 0
    for r in results:
        if r.ok:
            if verbose:
                lines.append(f"PASS {r.case.label}")
            continue
        failed += 1
        lines.append(f"FAIL {r.case.label}: {'; '.join(r.problems)}")
        lines.extend("    " + line for line in r.diff.splitlines())
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return lines, failed


def run_policy_tables(policy: Any, catalogue: dict[str, dict[str, dict[str, Any]]] | None = None) -> list[CaseResult]:
    """Run a compiled embedded policy's own table tests (any local engine's: its source holds the tables)."""
    return run_cases(load_tables(policy.source, catalogue), policy.evaluate_input)
