"""Why a decision came out as it did: the deny rules that produced each reason, the grant rules that allowed the
call, each with its file:line and the input values it read.

There is no tracer to ask, so each deny and grant rule definition is evaluated on its own: a copy of it, renamed,
is appended to its module (same package, same imports, so it means the same), and the copy's value under the
input says whether that definition fired and what it produced. A rule counts only if it makes the decision: the
decision changes when the rule is taken away (``with data.pkg.deny as set()``, ``with data.pkg.grants as false``)
or, for a grant that did not hold, when it is made to hold (``as true``); so the rules of a team the router did not
consult never show up. A grant that did not hold is shown with the last of its lines that was evaluated (regorus's
line coverage of the copy alone): where it stopped.

The input values a rule read are the ``input.*`` references of its body, through the package's aliases
(``args := input.arguments``) and the rules and functions it calls (``lib.is_call``), looked up in the input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.policy.coverage import is_enforcing
from gateway.policy.loader import PolicySource
from gateway.policy.regotest import ModuleAst, Rule, new_engine, parse_modules, regorus_error

_COPY = "__explain_"
CONTAINMENT = "containment"
"""A team's rule that narrows a call's sandbox: explained beside the grant."""
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_INPUT_REF = re.compile(rf'\binput((?:\.{_NAME}|\[\s*"[^"\\]*"\s*\])*)')
_ALIAS_DEF = re.compile(rf"^({_NAME})\s*:=\s*(input|data)((?:\.{_NAME})+)\s*(?:$|if\b)", re.M)
_DATA_REF = re.compile(rf"\bdata((?:\.{_NAME})+)")
_OBJECT_GET = re.compile(rf'object\.get\(\s*({_NAME}(?:\.{_NAME})*)\s*,\s*"([^"\\]+)"')
_CALLED = re.compile(rf"(?<![\w.\"])({_NAME}(?:\.{_NAME})*)")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|`[^`]*`')
_COMMENT = re.compile(r"#[^\n]*")


def _code(text: str) -> str:
    """The rule's text without comments and string literals (their contents are not references)."""
    return _STRING.sub('""', _COMMENT.sub("", text))


def _is_grant(rule: Rule) -> bool:
    name = rule.name.rpartition(".")[2]
    return name.endswith("grants") or name == "allow"


@dataclass(frozen=True)
class Read:
    path: str
    """``input.arguments.command``."""
    value: Any
    defined: bool
    recorded: bool = True
    """False for an argument the audit record kept only the digest of."""

    def describe(self) -> str:
        if not self.recorded:
            return f"{self.path} (not recorded)"
        if not self.defined:
            return f"{self.path} (undefined)"
        shown = orjson.dumps(self.value).decode()
        return f"{self.path} = {shown if len(shown) <= 80 else shown[:77] + '...'}"


@dataclass(frozen=True)
class RuleResult:
    rule: Rule
    where: str
    fired: bool
    value: Any
    reads: tuple[Read, ...]
    stopped_at: tuple[int, str] | None = None
    """For a rule that did not fire: the last line of it that was evaluated, and that line's text."""


@dataclass(frozen=True)
class Reason:
    text: str
    rules: tuple[RuleResult, ...]
    literal_at: str | None = None
    """Where the policy writes the reason as a literal, when no deny rule produced it (``no rule allows ...``)."""
    matched: bool = False
    """The rules were found by their message's wording (the arguments they read were not recorded)."""


@dataclass
class Explanation:
    decision: Any
    reasons: list[Reason] = field(default_factory=list)
    grants: list[RuleResult] = field(default_factory=list)
    """Grant rules the decision evaluated that held."""
    not_granted: list[RuleResult] = field(default_factory=list)
    """Grant rules that did not hold, where making them hold would change the decision."""
    containment: list[RuleResult] = field(default_factory=list)
    """The ``containment`` rules that narrowed this call."""
    """Grant rules the decision evaluated that did not hold."""
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        def rule(r: RuleResult) -> dict[str, Any]:
            out: dict[str, Any] = {"rule": r.rule.path, "at": r.where, "fired": r.fired}
            out["read"] = {x.path: x.value if x.defined and x.recorded else None for x in r.reads if x.path[0] == "i"}
            out["data"] = {x.path: x.value for x in r.reads if x.path.startswith("data.")}
            if r.stopped_at is not None:
                out["stopped_at"] = {"line": r.stopped_at[0], "text": r.stopped_at[1]}
            return out

        return {
            "decision": self.decision,
            "reasons": [
                {"reason": x.text, "rules": [rule(r) for r in x.rules], "literal_at": x.literal_at}
                for x in self.reasons
            ],
            "granted_by": [rule(r) for r in self.grants],
            "grants_not_held": [rule(r) for r in self.not_granted],
            "containment_by": [{**rule(r), "value": r.value} for r in self.containment],
            "notes": self.notes,
        }


class _Index:
    """The policy's rules by path, its modules' aliases, and the reads of each rule (computed once)."""

    def __init__(self, modules: list[ModuleAst]):
        self.modules = {m.file: m for m in modules}
        self.by_path: dict[str, list[Rule]] = {}
        for m in modules:
            for r in m.rules:
                self.by_path.setdefault(r.path, []).append(r)
        self.aliases: dict[str, dict[str, str]] = {}  # package -> name -> input or data path
        for m in modules:
            for r in m.rules:
                found = _ALIAS_DEF.match(r.text)
                if found and found.group(1) == r.name:
                    self.aliases.setdefault(m.package, {})[r.name] = found.group(2) + found.group(3)
        self._reads: dict[str, set[str]] = {}

    def reads(self, rule: Rule, seen: set[str] | None = None) -> set[str]:
        """The input (and data) paths a rule's text reads, directly, through aliases, and through the rules it
        calls."""
        seen = set() if seen is None else seen
        key = f"{rule.file}:{rule.start}"
        if key in seen:
            return set()
        seen.add(key)
        mod = self.modules[rule.file]
        aliases = self.aliases.get(mod.package, {})
        code = _code(rule.text)
        paths: set[str] = set()
        for m in _OBJECT_GET.finditer(rule.text):
            base = m.group(1)
            if base in aliases or base.startswith("input"):
                paths.add(f"{aliases.get(base, base)}.{m.group(2)}")
        for m in _INPUT_REF.finditer(code):
            paths.add("input" + re.sub(r'\[\s*"([^"]*)"\s*\]', r".\1", m.group(1)))
        for m in _DATA_REF.finditer(code):
            paths.add("data" + m.group(1))
        local = {r.name for ms in self.modules.values() if ms.package == mod.package for r in ms.rules}
        for m in _CALLED.finditer(code):
            ref = m.group(1)
            head, _, rest = ref.partition(".")
            if head in aliases and head != rule.name:
                paths.add(aliases[head] + (f".{rest}" if rest else ""))
                continue
            if head in mod.imports:
                target = mod.imports[head] + (f".{rest}" if rest else "")
            elif head in local and head != rule.name:
                target = f"data.{mod.package}.{head}"
            else:
                continue
            for called in self.by_path.get(target, []):
                paths |= self.reads(called, seen)
        return paths


def _lookup(doc: Any, path: str) -> tuple[Any, bool]:
    value = doc
    for part in path.split(".")[1:]:
        if not isinstance(value, dict) or part not in value:
            return None, False
        value = value[part]
    return value, True


def _read_all(paths: set[str], input: dict[str, Any], data: dict[str, Any]) -> tuple[Read, ...]:
    """The values at the paths: input ones (undefined said so), data ones that are documents (not rules)."""
    out = []
    for p in _minimal(paths):
        if p.startswith("input"):
            out.append(Read(p, *_lookup(input, p)))
        else:
            value, defined = _lookup(data, p)
            if defined:
                out.append(Read(p, value, True))
    return tuple(out)


def _minimal(paths: set[str]) -> list[str]:
    """The paths, without those a longer one already names (``input.arguments`` when ``input.arguments.url``)."""
    return sorted(p for p in paths if not any(q != p and q.startswith(p + ".") for q in paths))


def _norm(value: Any) -> Any:
    """A value with its sets as sorted lists, comparable and printable as JSON."""
    if isinstance(value, (set, frozenset)):
        return sorted((_norm(v) for v in value), key=lambda v: orjson.dumps(v, option=orjson.OPT_SORT_KEYS))
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return value


_FORWARD = re.compile(r"data\.[\w.]*\[[^\]]+\]\.(\w+)")


def _forwards(rule: Rule) -> bool:
    """A rule that hands on another package's rule of its kind (the router's ``team_grants``): not a cause itself."""
    return any(
        is_enforcing(Rule("", "", m.group(1), rule.kind, 0, 0, 0, 0, 0, "")) for m in _FORWARD.finditer(rule.text)
    )


def explain(source: PolicySource, input: dict[str, Any], decision_path: str) -> Explanation:
    """Evaluate the decision on the regorus interpreter and attribute it to the policy's rules."""
    modules = parse_modules(new_engine(source, tests=False))
    index = _Index(modules)
    candidates: list[Rule] = [
        r
        for m in modules
        for r in m.rules
        if (is_enforcing(r) or r.name == CONTAINMENT)
        and r.kind in ("set", "complete")
        and "." not in r.name
        and r.text.startswith(r.name)
        and not _forwards(r)
    ]
    copies: dict[str, list[tuple[int, Rule]]] = {}
    for i, r in enumerate(candidates):
        copies.setdefault(r.file, []).append((i, r))
    shifted = dict(source.modules)
    offsets: dict[int, int] = {}
    for name, items in copies.items():
        text = source.modules[name].rstrip("\n") + "\n"
        for i, r in items:
            offsets[i] = text.count("\n") + 2 - r.line  # the copy's line = the rule's line + offset
            text += "\n" + _COPY + str(i) + r.text[len(r.name) :] + "\n"
        shifted[name] = text
    shadow = PolicySource(shifted, source.data, source.revision, source.root, kind=source.kind)
    engine = new_engine(shadow, tests=False, coverage=True)
    engine.set_input_json(orjson.dumps(input).decode())
    rule_path = "data." + decision_path.replace("/", ".")
    try:
        decision = _norm(engine.eval_rule(rule_path))
    except Exception as exc:
        return Explanation(None, notes=[f"the decision could not be evaluated: {regorus_error(exc, source)}"])
    out = Explanation(decision)

    def changes(path: str, value: str) -> bool:
        """Whether the decision changes when the rule at ``path`` is replaced by ``value`` (the rule matters)."""
        try:
            got = engine.eval_query(f"x := {rule_path} with {path} as {value}")
            bindings = got["result"][0]["bindings"] if got.get("result") else {}
        except Exception:
            return False
        return _norm(bindings.get("x")) != decision

    results: list[RuleResult] = []
    matters: dict[tuple[str, bool], bool] = {}
    for i, r in enumerate(candidates):
        engine.clear_coverage_data()
        try:
            value = _norm(engine.eval_rule(f"data.{r.package}.{_COPY}{i}"))
        except Exception as exc:
            out.notes.append(f"{r.name} at {source.where(r.file)}:{r.line}: {regorus_error(exc, source)}")
            continue
        fired = bool(value) if r.kind == "set" or r.name == CONTAINMENT else value is not None and value is not False
        if r.name == CONTAINMENT and not fired:
            continue  # no narrowing
        if r.kind == "set" and not fired:
            continue  # a deny rule that did not fire explains nothing
        # Did this rule (all its definitions) make the decision? Take it away (a fired one) or make it hold (a
        # grant that did not): only a rule whose package the decision consults changes it.
        key = (r.path, fired)
        if key not in matters:
            neutral = "set()" if r.kind == "set" else "{}" if r.name == CONTAINMENT else "false"
            matters[key] = changes(r.path, neutral if fired else "true")
        if not matters[key]:
            continue
        stopped = None
        if not fired:
            own = {n - offsets[i] for n in _covered(engine).get(r.file, set())}
            lines = sorted(n for n in own if n in r.lines)
            if lines:
                stopped = (lines[-1], source.modules[r.file].splitlines()[lines[-1] - 1].strip())
        reads = _read_all(index.reads(r), input, source.data)
        results.append(RuleResult(r, f"{source.where(r.file)}:{r.line}", fired, value, reads, stopped))
    reasons = decision.get("reasons") if isinstance(decision, dict) else None
    for text in reasons if isinstance(reasons, list) else []:
        producers = tuple(
            x for x in results if x.fired and x.rule.kind == "set" and isinstance(x.value, list) and text in x.value
        )
        out.reasons.append(Reason(str(text), producers, None if producers else _literal(source, modules, str(text))))
    out.grants = [x for x in results if x.fired and _is_grant(x.rule)]
    out.not_granted = [x for x in results if not x.fired and _is_grant(x.rule)]
    out.containment = [x for x in results if x.rule.name == CONTAINMENT]
    return out


_FORMAT = re.compile(r"%(?:[-+# 0]*\d*(?:\.\d+)?)[vsdfqxXtTeEgGbo%]")
_MSG_SPRINTF = re.compile(r'sprintf\(\s*("(?:[^"\\]|\\.)*")')
_MSG_CONCAT = re.compile(r'concat\(\s*""\s*,\s*\[')
_HEAD_LITERAL = re.compile(r'^\w+\s+contains\s+("(?:[^"\\]|\\.)*")')


def message_pattern(rule: Rule) -> re.Pattern[str] | None:
    """What a deny rule's messages look like: its literal, or its sprintf format or concat parts with the computed
    parts as wildcards. Finds the rule of a recorded reason whose argument values were not recorded."""
    text = rule.text
    head = _HEAD_LITERAL.match(text)
    if head:
        return re.compile(re.escape(orjson.loads(head.group(1))) + r"\Z")
    fmt = _MSG_SPRINTF.search(text)
    if fmt:
        parts = _FORMAT.split(orjson.loads(fmt.group(1)))
        return re.compile(".*?".join(re.escape(p) for p in parts) + r"\Z", re.S)
    concat = _MSG_CONCAT.search(text)
    if concat:
        depth, i, pieces, plain = 1, concat.end(), [], True
        while i < len(text) and depth:
            c = text[i]
            if c == '"':
                lit = re.match(r'"(?:[^"\\]|\\.)*"', text[i:])
                assert lit is not None
                if depth == 1:
                    pieces.append(re.escape(orjson.loads(lit.group(0))))
                    plain = True
                i += len(lit.group(0))
                continue
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            if depth >= 1 and c not in " \t\n," and (depth > 1 or c not in "]") and plain:
                pieces.append(".*?")
                plain = False
            i += 1
        return re.compile("".join(pieces) + r"\Z", re.S) if pieces else None
    return None


def explain_recorded(
    source: PolicySource, input: dict[str, Any], decision_path: str, reasons: list[str], redacted: bool
) -> Explanation:
    """The explanation of a recorded decision: re-evaluated on the recorded input. When its arguments were
    recorded only as a digest, a recorded reason the re-evaluation cannot produce is matched to the deny rule
    whose message it has the wording of, and the argument values the rules read are shown as not recorded."""
    ex = explain(source, input, decision_path)
    if redacted:
        for x in [*ex.grants, *ex.not_granted, *(r for reason in ex.reasons for r in reason.rules)]:
            object.__setattr__(x, "reads", tuple(_unrecorded(r) for r in x.reads))
    produced = {r.text: r for r in ex.reasons}
    out = []
    engine = new_engine(source, tests=False)
    engine.set_input_json(orjson.dumps(input).decode())
    modules = parse_modules(engine)
    index = _Index(modules)
    rule_path = "data." + decision_path.replace("/", ".")

    def consulted(rule: Rule, text: str) -> bool:
        """Whether the decision would carry ``text`` had this rule produced it (its package is consulted)."""
        try:
            got = engine.eval_query(f"x := {rule_path} with {rule.path} as {{{orjson.dumps(text).decode()}}}")
            decided = _norm(got["result"][0]["bindings"]["x"]) if got.get("result") else None
        except Exception:
            return False
        return isinstance(decided, dict) and text in (decided.get("reasons") or [])

    for text in reasons:
        if text in produced and (produced[text].rules or produced[text].literal_at):
            out.append(produced[text])
            continue
        matched = []
        for m in modules:
            for rule in m.rules:
                if rule.kind != "set" or not is_enforcing(rule):
                    continue
                pattern = message_pattern(rule)
                if pattern is not None and pattern.match(text) and consulted(rule, text):
                    reads = tuple(_unrecorded(x) for x in _read_all(index.reads(rule), input, source.data))
                    matched.append(RuleResult(rule, f"{source.where(rule.file)}:{rule.line}", True, None, reads))
        literal = None if matched else _literal(source, modules, text)
        out.append(Reason(text, tuple(matched), literal, matched=bool(matched)))
    ex.reasons = out
    return ex


def _unrecorded(r: Read) -> Read:
    if r.path == "input.arguments" or r.path.startswith("input.arguments."):
        return Read(r.path, None, False, recorded=False)
    return r


def _covered(engine: Any) -> dict[str, set[int]]:
    report = orjson.loads(engine.get_coverage_report_as_json())
    return {f["path"]: set(f.get("covered", [])) for f in report.get("files", [])}


def _literal(source: PolicySource, modules: list[ModuleAst], text: str) -> str | None:
    """Where the policy writes ``text`` as a string literal, and the rule around it."""
    needle = orjson.dumps(text).decode()
    for m in modules:
        src = source.modules.get(m.file, "")
        at = src.find(needle)
        if at < 0:
            continue
        line = src.count("\n", 0, at) + 1
        offset = len(src[:at].encode())
        around = next((r for r in m.rules if r.start <= offset < r.end), None)
        return f"{source.where(m.file)}:{line}" + (f" ({around.name})" if around else "")
    return None


def report(ex: Explanation) -> list[str]:
    """The explanation in words: each reason with the rule that produced it and what it read; the grant."""
    lines = ["explanation:"]
    for note in ex.notes:
        lines.append(f"  note: {note}")
    for reason in ex.reasons:
        lines.append(f"  reason {orjson.dumps(reason.text).decode()}")
        for r in reason.rules:
            how = "matches the message of" if reason.matched else "produced by"
            lines.append(f"    {how} {r.rule.name} at {r.where} (package {r.rule.package})")
            lines += _reads(r)
        if not reason.rules:
            lines.append(
                f"    written at {reason.literal_at}" if reason.literal_at else "    no rule of the policy produced it"
            )
            if ex.not_granted and not ex.grants:
                lines.append("    no grant rule held:")
                for r in ex.not_granted:
                    stop = f": stopped at line {r.stopped_at[0]} `{r.stopped_at[1]}`" if r.stopped_at else ""
                    lines.append(f"      {r.rule.name} at {r.where}{stop}")
                    lines += ["  " + line for line in _reads(r)]
    if isinstance(ex.decision, dict) and ex.decision.get("mode") == "monitor":
        lines.append("  mode monitor: only rules on trial deny it; the gateway lets the call through, as would_deny")
    allowed = isinstance(ex.decision, dict) and ex.decision.get("allow") is True
    for r in ex.grants:
        lines.append(
            f"  {'allowed' if allowed else 'granted'} by {r.rule.name} at {r.where} (package {r.rule.package})"
        )
        lines += _reads(r)
    for r in ex.containment:
        narrowed = orjson.dumps(r.value).decode()
        lines.append(f"  contained {narrowed} by {r.rule.name} at {r.where} (package {r.rule.package})")
        lines += _reads(r)
    if allowed and not ex.grants:
        lines.append("  allowed by a rule that is not a grant rule (grants, protocol_grants, allow)")
    return lines


def _reads(r: RuleResult) -> list[str]:
    inputs = [x.describe() for x in r.reads if x.path.startswith("input")]
    data = [x.describe() for x in r.reads if x.path.startswith("data.")]
    out = ["      it read: " + ", ".join(inputs)] if inputs else []
    return out + (["      against: " + ", ".join(data)] if data else [])
