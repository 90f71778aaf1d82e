"""Standard Rego tests (``*_test.rego``, ``test_`` rules, ``with input as ...``), run as ``opa test`` runs them.

The tests run on the regorus interpreter (``regorus.Engine``), which evaluates ``with`` on ``input``, on ``data``
(documents and rules) and on built-in functions. It does not replace a function written in Rego: ``with
data.pkg.f as ...`` is silently ignored there, so a test that does it is reported as an ERROR at the ``with``
(file:line:col) instead of being run and trusted. A test passes when its rule is defined and not false, as in OPA;
an evaluation error is an ERROR with the place regorus names.

The module also reads a policy's rules from regorus's AST (name, package, kind, line span): coverage and
explanations are computed per rule from it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import regorus

from gateway.policy.decision import PolicyError
from gateway.policy.loader import PolicySource

TEST_PREFIX = "test_"
TODO_PREFIX = "todo_"
"""OPA's convention: a ``todo_`` rule is a test that is skipped (reported SKIPPED, never run)."""

_ERROR_AT = re.compile(r"-->\s*(\S+?):(\d+):(\d+)")
_ERROR_MSG = re.compile(r"^error:\s*(.*)$", re.M)


# --- the policy's rules, from regorus's AST ---------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One definition of a rule (a rule defined by several bodies, ``deny contains ... if``, has several)."""

    file: str
    package: str
    """Dotted, without ``data.``: ``gateway.teams.platform``."""
    name: str
    kind: str
    """``complete`` (``x := v``, ``x if``), ``set`` (``contains``), ``function`` or ``default``."""
    line: int
    col: int
    end_line: int
    start: int
    end: int
    """Byte offsets of the whole definition (head and body) in the file's UTF-8 text."""
    text: str
    lines: tuple[int, ...] = ()
    """The lines coverage counts: the head's and each statement's of its bodies."""

    @property
    def path(self) -> str:
        return f"data.{self.package}.{self.name}"


@dataclass(frozen=True)
class WithMod:
    file: str
    line: int
    col: int
    target: str
    """The replaced reference, resolved through the module's imports and package (``data.p.f``, ``input``)."""
    rule: str
    """The path of the rule whose body holds it."""


@dataclass
class ModuleAst:
    file: str
    package: str
    text: bytes
    rules: list[Rule] = field(default_factory=list)
    withs: list[WithMod] = field(default_factory=list)
    imports: dict[str, str] = field(default_factory=dict)
    """Alias -> the data path it names (``lib`` -> ``data.gateway.lib``)."""


def ref_path(node: Any) -> str | None:
    """``a.b["c"]`` as ``a.b.c``; None for a reference with a computed part."""
    if not isinstance(node, dict):
        return None
    if "Var" in node:
        return str(node["Var"]["value"])
    if "RefDot" in node:
        base = ref_path(node["RefDot"]["refr"])
        return f"{base}.{node['RefDot']['field'][1]}" if base else None
    if "RefBrack" in node:
        base = ref_path(node["RefBrack"]["refr"])
        index = node["RefBrack"]["index"]
        if base and isinstance(index, dict) and "String" in index:
            return f"{base}.{index['String']['value']}"
    return None


def _end_line(text: bytes, end: int) -> int:
    return text.count(b"\n", 0, end) + 1


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _resolve(ref: str, mod: ModuleAst, local_rules: set[str]) -> str:
    head, _, rest = ref.partition(".")
    if head in ("input", "data"):
        return ref
    if head in mod.imports:
        return mod.imports[head] + (f".{rest}" if rest else "")
    if head in local_rules:
        return f"data.{mod.package}.{ref}"
    return ref  # a built-in function (count, time.now_ns)


def parse_modules(engine: regorus.Engine) -> list[ModuleAst]:
    """Every module the engine holds, with its rules and the ``with`` modifiers of their bodies."""
    out = []
    for entry in orjson.loads(engine.get_ast_as_json()):
        text = entry["source"]["contents"].encode()
        ast = entry["ast"]
        package = (ref_path(ast["package"]["refr"]) or "").removeprefix("data.")
        mod = ModuleAst(entry["source"]["file"], package, text)
        for imp in ast.get("imports", []):
            target = ref_path(imp["refr"]) or ""
            alias_span = imp.get("as")
            alias = text[alias_span["start"] : alias_span["end"]].decode() if alias_span else target.rpartition(".")[2]
            if target.startswith("data."):
                mod.imports[alias] = target
        for item in ast.get("rules", []):
            kind_key = next(iter(item))
            spec = item[kind_key]
            span = spec["span"]
            if kind_key == "Default":
                name, kind = ref_path(spec["refr"]), "default"
            else:
                head_kind = next(iter(spec["head"]))
                head = spec["head"][head_kind]
                name = ref_path(head["refr"])
                kind = {"Func": "function", "Set": "set"}.get(head_kind, "complete")
            if name is None:
                continue
            start, end = span["start"], span["end"]
            # A rule runs to the end of its last line: regorus's span stops short of a closing quote.
            eol = text.find(b"\n", max(end - 1, start))
            end = len(text) if eol < 0 else eol
            stmts = {
                st["span"]["line"] for body in spec.get("bodies", []) for st in body["query"]["stmts"] if "span" in st
            }
            mod.rules.append(
                Rule(
                    mod.file,
                    package,
                    name,
                    kind,
                    span["line"],
                    span["col"],
                    _end_line(text, end),
                    start,
                    end,
                    text[start:end].decode(),
                    tuple(sorted(stmts | {span["line"]})),
                )
            )
        local = {r.name.partition(".")[0] for r in mod.rules}
        for item, rule in zip(
            (i for i in ast.get("rules", []) if ref_path(_head_ref(i)) is not None), mod.rules, strict=True
        ):
            for node in _walk(item):
                for w in node.get("with_mods") or []:
                    replaced = ref_path(w["refr"])
                    if replaced is None:
                        continue
                    at = _first_span(w["refr"])
                    mod.withs.append(
                        WithMod(mod.file, at["line"], at["col"], _resolve(replaced, mod, local), rule.path)
                    )
        out.append(mod)
    return out


def _head_ref(item: dict[str, Any]) -> Any:
    kind_key = next(iter(item))
    spec = item[kind_key]
    if kind_key == "Default":
        return spec["refr"]
    return next(iter(spec["head"].values()))["refr"]


def _first_span(node: Any) -> dict[str, int]:
    """The span of the innermost (leftmost) part of a reference: where it starts in the text."""
    while isinstance(node, dict):
        inner = next(iter(node.values()))
        if not isinstance(inner, dict):
            break
        if "refr" in inner:
            node = inner["refr"]
            continue
        return dict(inner["span"])
    return {"line": 0, "col": 0}


# --- the engine -----------------------------------------------------------------------------------------------


def regorus_error(exc: Exception, source: PolicySource) -> str:
    """regorus's error as ``file:line:col: message`` with the file as the policy names it."""
    text = str(exc)
    at = _ERROR_AT.search(text)
    msg_m = _ERROR_MSG.search(text)
    msg = msg_m.group(1).strip() if msg_m else text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if at is None:
        return f"{source.root}: {msg}"
    name, line, col = at.groups()
    known = name in source.modules or name in source.rego_tests
    return f"{source.where(name) if known else name}:{line}:{col}: {msg}"


def new_engine(source: PolicySource, tests: bool = True, coverage: bool = False) -> regorus.Engine:
    """A regorus interpreter holding the policy's modules, its data and (``tests``) its Rego test modules."""
    engine = regorus.Engine()
    modules = dict(source.modules)
    if tests:
        modules.update(source.rego_tests)
    errors = []
    for name, text in modules.items():
        try:
            engine.add_policy(name, text)
        except Exception as exc:
            errors.append(regorus_error(exc, source))
    if errors:
        raise PolicyError(errors)
    engine.add_data_json(orjson.dumps(source.data).decode())
    if coverage:
        engine.set_enable_coverage(True)
    return engine


# --- running tests --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestResult:
    rule: Rule
    outcome: str
    """PASS, FAIL, ERROR or SKIPPED."""
    duration_ms: float
    detail: str = ""

    @property
    def name(self) -> str:
        return self.rule.path

    @property
    def failed(self) -> bool:
        return self.outcome in ("FAIL", "ERROR")


def discover(modules: list[ModuleAst], test_files: set[str]) -> list[Rule]:
    """The test rules of the test modules, one per rule path (a test defined twice is one rule, OR-ed)."""
    seen: dict[str, Rule] = {}
    for mod in modules:
        if mod.file not in test_files:
            continue
        for r in mod.rules:
            if r.kind in ("complete", "set") and r.name.startswith((TEST_PREFIX, TODO_PREFIX)):
                seen.setdefault(r.path, r)
    return sorted(seen.values(), key=lambda r: (r.file, r.line))


def unsupported_withs(modules: list[ModuleAst], source: PolicySource) -> dict[str, list[str]]:
    """Rule path -> ``file:line:col: why`` for each ``with`` regorus would ignore (it replaces a Rego function)."""
    functions = {r.path for m in modules for r in m.rules if r.kind == "function"}
    out: dict[str, list[str]] = {}
    for m in modules:
        for w in m.withs:
            if w.target in functions:
                out.setdefault(w.rule, []).append(
                    f"{_file(source, w.file)}:{w.line}:{w.col}: `with {w.target} as ...` replaces a function "
                    "written in Rego, which the embedded engine (regorus) cannot do (it would ignore the with): "
                    "replace its inputs (input, data) or a rule it reads instead"
                )
    return out


def run_tests(
    source: PolicySource,
    engine: regorus.Engine,
    modules: list[ModuleAst],
    run: re.Pattern[str] | None = None,
) -> list[TestResult]:
    """Run the test rules of ``source``'s test modules (``run`` filters them by their path, as ``opa test -r``)."""
    tests = discover(modules, set(source.rego_tests))
    bad_withs = unsupported_withs(modules, source)
    results = []
    for rule in tests:
        if run is not None and not run.search(rule.path):
            continue
        where = _where(source, rule)
        if rule.name.startswith(TODO_PREFIX):
            results.append(TestResult(rule, "SKIPPED", 0.0))
            continue
        if rule.path in bad_withs:
            results.append(TestResult(rule, "ERROR", 0.0, "\n".join(bad_withs[rule.path])))
            continue
        t0 = time.perf_counter()
        try:
            value = engine.eval_rule(rule.path)
        except Exception as exc:
            ms = (time.perf_counter() - t0) * 1000
            results.append(TestResult(rule, "ERROR", ms, regorus_error(exc, source)))
            continue
        ms = (time.perf_counter() - t0) * 1000
        if value is None or value is False:
            what = "undefined" if value is None else "false"
            results.append(TestResult(rule, "FAIL", ms, f"{where}: {rule.name} is {what}"))
        else:
            results.append(TestResult(rule, "PASS", ms))
    return results


def _where(source: PolicySource, rule: Rule) -> str:
    return f"{_file(source, rule.file)}:{rule.line}:{rule.col}"


def _file(source: PolicySource, name: str) -> str:
    return source.where(name) if name in source.modules or name in source.rego_tests else name


_RULE = "-" * 80


def report(source: PolicySource, results: list[TestResult], verbose: bool) -> list[str]:
    """``opa test``'s output: failures with their detail, results by file, then ``PASS: n/m`` (and FAIL, ERROR,
    SKIPPED counts). Without ``verbose`` a clean run prints only the counts."""
    lines: list[str] = []
    bad = [r for r in results if r.failed]
    if bad and not verbose:
        lines += ["FAILURES", _RULE]
        for r in bad:
            lines.append(_result_line(r))
            lines += ["", *("  " + d for d in r.detail.splitlines()), ""]
        lines += ["SUMMARY", _RULE]
    if bad or verbose:
        current = None
        for r in results:
            if r.rule.file != current:
                if current is not None:
                    lines.append("")
                current = r.rule.file
                lines.append(f"{_file(source, r.rule.file)}:")
            lines.append(_result_line(r))
            if verbose and r.failed:
                lines += ["  " + d for d in r.detail.splitlines()]
        lines.append(_RULE)
    total = len(results)
    for outcome in ("PASS", "FAIL", "SKIPPED", "ERROR"):
        n = sum(1 for r in results if r.outcome == outcome)
        if n or outcome == "PASS":
            lines.append(f"{outcome}: {n}/{total}")
    return lines


def _result_line(r: TestResult) -> str:
    if r.outcome == "SKIPPED":
        return f"{r.name}: SKIPPED"
    return f"{r.name}: {r.outcome} ({r.duration_ms:.3f}ms)"
