"""The embedded engine: regorus (Rust, ``gordon-to-regorus``) in-process, on its register VM (RVM) by default.

A revision is compiled once into an RVM program; each thread keeps its own VM loaded with it (VMs are not shared
between threads). regorus holds the GIL while it evaluates, so a decision runs inline on the caller's thread (the
event loop): a decision costs tens of microseconds, less than a hop to a worker thread and back.

What the RVM gets wrong, and how this wrapper keeps it from mis-evaluating (docs/policy.md, "The embedded engine"):
- ``x := <undefined>`` does not fail the body in the RVM (``allow if { t := input.missing }`` allowed; an ``else``
  after such a body was never taken). Every ``lhs := rhs`` in a body is compiled as ``[lhs] := [rhs]``, which the
  RVM does fail on an undefined ``rhs``; the meaning is unchanged.
- A rule reached through an import alias (``lib.is_call``) compiles as an evaluation of the alias's whole package;
  such references are spelt as their full path (``data.gateway.lib.is_call``), a call of that rule alone.
- Built-in errors are undefined (OPA's default, non-strict); the RVM does not expose strict mode to Python. A rule
  that reaches a failing built-in is undefined: write deny rules so that undefined denies, or use
  ``engine = "regorus"`` (the interpreter: strict, slower).
- An undefined result is the JSON string ``"<undefined>"``; any such value in a result fails the decision closed.
- What the RVM cannot compile (``with``, unknown built-ins, unsafe variables) is refused at load, as file:line:col.
- Execution stops after 25,000 instructions (fixed in the package): a runaway policy fails closed with an error.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson
import regorus

from gateway.policy.decision import Decision, PolicyError
from gateway.policy.lint import check as lint
from gateway.policy.lint import mask
from gateway.policy.loader import PolicySource, load_policy

T = TypeVar("T")

log = logging.getLogger("gateway.policy")

_UNDEFINED = '"<undefined>"'
_DECISION_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")
_AT = re.compile(r"-->\s*(.+?):(\d+):(\d+)")
_MSG = re.compile(r"^error:\s*(.+)$", re.M)


class RvmUnsupported(PolicyError):
    """Valid Rego the RVM cannot run as OPA does (``with``, ``walk``, an ``else`` after a loop): the embedded engine
    decides that revision on regorus's interpreter instead, and says so with the place."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).split("Stack backtrace:")[0].strip()
    msgs = [m for m in _MSG.findall(text) if m.strip() and not m.startswith("Compilation error")]
    return (msgs[-1] if msgs else text.splitlines()[0] if text else type(exc).__name__).strip()


_ASCII = {"s": "\t\n\f\r ", "d": "0-9", "w": "0-9A-Za-z_"}
"""RE2's (OPA's) ``\\s``, ``\\d``, ``\\w``: ASCII only. regorus's regex (Rust) reads them as Unicode classes."""
_PATTERN_FUNCS = frozenset(
    {"regex.match", "regex.split", "regex.find_n", "regex.replace", "regex.find_all_string_submatch_n"}
)


def re2_classes(pattern: str) -> str:
    """The pattern with ``\\s \\d \\w`` (and ``\\S \\D \\W`` outside brackets) spelt as the ASCII classes RE2 means by
    them, so regorus matches what OPA matches (it read U+00A0 as white space where OPA does not)."""
    out, i, n, in_class = [], 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            e = pattern[i + 1]
            if e.lower() in _ASCII and ((in_class and e.islower()) or not in_class):
                chars = _ASCII[e.lower()]
                out.append(chars if in_class else ("[" + ("" if e.islower() else "^") + chars + "]"))
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
            out.append(c)
            if pattern[i + 1 : i + 2] == "^":
                out.append("^")
                i += 1
            if pattern[i + 1 : i + 2] == "]":  # a leading ] is a member, not the end
                out.append("]")
                i += 1
        elif c == "]" and in_class:
            in_class = False
            out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def ascii_regexes(name: str, text: str) -> str:
    """The module with each literal regex pattern spelt with RE2's ASCII classes (``re2_classes``); only string
    literals passed as a pattern are touched, and each keeps its line."""
    from gateway.policy.lint import _literal_arg, _scan

    mod = _scan(name, text)
    edits = []
    for fn, _start, after in mod.calls:
        if fn not in _PATTERN_FUNCS:
            continue
        lit = _literal_arg(mod, after)
        if lit is None or lit.value is None:
            continue
        new = re2_classes(lit.value)
        if new != lit.value:
            edits.append((lit.start, lit.end, orjson.dumps(new).decode()))
    for start, end, spelt in sorted(edits, reverse=True):
        text = text[:start] + spelt + text[end:]
    return text


class _Module:
    """One module as compiled for the RVM: its source with every assignment guarded, and how to map a position in
    the guarded text back to the file."""

    def __init__(self, name: str, text: str):
        self.name = name
        self.text = ascii_regexes(name, text)
        self.inserted: list[int] = []
        """Offsets (characters, in the original text) before which one character was inserted."""
        self.guarded = self._guard()

    def _ast(self, text: str) -> Any:
        engine = regorus.Engine()
        try:
            engine.add_policy(self.name, text)
            return orjson.loads(engine.get_ast_as_json())
        except Exception as exc:
            raise PolicyError([self._located(exc, text is self.text)]) from None

    def _assignments(self, text: str, arrays: bool = False) -> list[dict[str, Any]]:
        """The ``:=`` expressions of every query; with ``arrays``, only those that read ``[lhs] := [(rhs)]``."""
        ast = self._ast(text)
        if text is self.text:
            self._loops_before_else(ast)
        found: list[dict[str, Any]] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                assign = node.get("AssignExpr")
                if isinstance(assign, dict) and assign.get("op") == "ColEq":
                    rhs = assign["rhs"].get("Array", {}).get("items", [])
                    if not arrays or ("Array" in assign["lhs"] and len(rhs) == 1):
                        found.append(assign)
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(ast)
        return found

    def _guard(self) -> str:
        text = self.text
        data = text.encode()
        # byte offset -> character offset (the AST counts bytes)
        chars = [0] * (len(data) + 1)
        i = 0
        for ci, ch in enumerate(text):
            for _ in range(len(ch.encode())):
                chars[i] = ci
                i += 1
        chars[len(data)] = len(text)
        m = mask(text)
        edits: list[tuple[int, str]] = []
        found = self._assignments(text)
        for a in found:
            lhs = next(iter(a["lhs"].values()))["span"]
            rhs = next(iter(a["rhs"].values()))["span"]
            l0, l1, r1 = chars[lhs["start"]], chars[lhs["end"]], chars[rhs["end"]]
            op = m.find(":=", l1)
            start = op + 2
            while start < len(m) and m[start] in " \t":
                start += 1
            end = max(r1, start)
            while end < len(m):  # the RHS span leaves out closing quotes and enclosing parentheses
                seg = m[start:end]
                if seg.count('"') % 2 or seg.count("`") % 2:
                    end += 1
                elif seg.count("(") > seg.count(")"):
                    end = m.find(")", end) + 1 or len(m)
                else:
                    break
            seg = m[start:end]
            if op < 0 or any(seg.count(o) != seg.count(c) for o, c in ("()", "[]", "{}")):
                line, col = text.count("\n", 0, l0) + 1, l0 - text.rfind("\n", 0, l0)
                raise PolicyError([f"{self.name}:{line}:{col}: the embedded engine cannot read this assignment"])
            # parenthesised: "[d | g]" alone would read as an array comprehension
            edits += [(l0, "["), (l1, "]"), (start, "[("), (end, ")]")]
        edits += [(chars[at], prefix) for at, prefix in _import_roots(self._ast(text))]
        out, last = [], 0
        for pos, s in sorted(edits, key=lambda e: e[0]):
            out += [text[last:pos], s]
            last = pos
            self.inserted += [pos] * len(s)
        guarded = "".join(out) + text[last:]
        if len(self._assignments(guarded, arrays=True)) != len(found):  # never compile a changed structure
            raise PolicyError([f"{self.name}: the embedded engine could not guard this module's assignments"])
        return guarded

    def _loops_before_else(self, ast: Any) -> None:
        """Refuse an ``else`` after a body that iterates: when the iteration finds nothing, the RVM leaves the rule
        undefined instead of taking the ``else`` (``x := "a" if { some r in roles; r == "x" } else := "b"``)."""
        rules = ast[0]["ast"].get("rules", []) if isinstance(ast, list) and ast else []
        names = {_head_name(r) for r in rules}
        errors = []
        for rule in rules:
            spec = rule.get("Spec")
            if not spec or len(spec.get("bodies", [])) < 2:
                continue
            head = spec["head"]
            bound = set(names) | {"input", "data"}
            for arg in next(iter(head.values())).get("args", []) or []:
                bound |= _vars(arg)
            for body in spec["bodies"][:-1]:
                where = _iteration(body["query"]["stmts"], set(bound))
                if where is not None:
                    line, col = where["line"], where["col"]
                    errors.append(
                        f"{self.name}:{line}:{col}: the embedded engine (regorus RVM) does not take the else after a "
                        "body that iterates and finds nothing: move the iteration into a rule of its own "
                        '(or use engine = "regorus")'
                    )
        if errors:
            raise RvmUnsupported(errors)

    def original(self, line: int, col: int) -> tuple[int, int]:
        """A line and column of the guarded text, in the original text."""
        g = self.guarded
        offset = 0
        for _ in range(line - 1):
            offset = g.find("\n", offset) + 1
        offset += col - 1
        shift = 0
        for pos in self.inserted:
            if pos + shift < offset:
                shift += 1
        o = offset - shift
        return self.text.count("\n", 0, o) + 1, o - self.text.rfind("\n", 0, o)

    def _located(self, exc: BaseException, original: bool) -> str:
        where = _AT.search(str(exc))
        msg = _first_line(exc)
        if where is None:
            return f"{self.name}: {msg}"
        line, col = int(where.group(2)), int(where.group(3))
        if not original:
            line, col = self.original(line, col)
        return f"{self.name}:{line}:{col}: {msg}"


def _head_name(rule: dict[str, Any]) -> str:
    spec = rule.get("Spec") or rule.get("Default") or {}
    head = spec.get("head") or spec
    node: Any = next(iter(head.values())) if isinstance(head, dict) and head else {}
    refr = node.get("refr", {}) if isinstance(node, dict) else {}
    while isinstance(refr, dict) and "Var" not in refr and refr:
        refr = next(iter(refr.values())).get("refr", {})
    return str(refr.get("Var", {}).get("value", "")) if isinstance(refr, dict) else ""


def _vars(node: Any) -> set[str]:
    """The variable names in a term (the parts of an assignment's left-hand side)."""
    out: set[str] = set()
    if isinstance(node, dict):
        if "Var" in node and isinstance(node["Var"], dict):
            out.add(node["Var"].get("value", ""))
        for v in node.values():
            out |= _vars(v)
    elif isinstance(node, list):
        for v in node:
            out |= _vars(v)
    return out


_SCOPES = ("ArrayCompr", "SetCompr", "ObjectCompr", "Every")


def _iteration(stmts: list[dict[str, Any]], bound: set[str]) -> dict[str, Any] | None:
    """The span of the first statement of a body that iterates (``some``, or a reference indexed by a variable
    nothing bound before it), or None. Comprehensions and ``every`` are their own scope: not this body's loop."""
    for stmt in stmts:
        lit = stmt.get("literal", {})
        if "SomeIn" in lit or "SomeVars" in lit:
            return dict(stmt["span"])

        def walk(node: Any, bound: set[str] = bound) -> bool:
            if isinstance(node, dict):
                if any(k in node for k in _SCOPES):
                    return False
                brack = node.get("RefBrack")
                if isinstance(brack, dict):
                    index = brack.get("index", {})
                    var = index.get("Var", {}).get("value") if isinstance(index, dict) else None
                    if var is not None and var not in bound:
                        return True
                return any(walk(v, bound) for v in node.values())
            if isinstance(node, list):
                return any(walk(v, bound) for v in node)
            return False

        if walk(lit):
            return dict(stmt["span"])
        expr = lit.get("Expr", {}).get("expr", {})
        assign = expr.get("AssignExpr") if isinstance(expr, dict) else None
        if isinstance(assign, dict):
            bound |= _vars(assign.get("lhs"))
    return None


def _data_import(imp: dict[str, Any]) -> tuple[str, str] | None:
    """``(alias, "data.a.b.")`` for ``import data.a.b.alias`` (no ``as``, dotted fields only), else None."""
    if imp.get("as") is not None:
        return None
    node, fields = imp.get("refr", {}), []
    while isinstance(node, dict) and "RefDot" in node:
        fields.append(node["RefDot"]["field"][1])
        node = node["RefDot"]["refr"]
    if not fields or not isinstance(node, dict) or node.get("Var", {}).get("value") != "data":
        return None
    path = ["data", *reversed(fields)]
    return path[-1], ".".join(path[:-1]) + "."


def _import_roots(ast: Any) -> list[tuple[int, str]]:
    """Where to spell a reference through an imported package (``lib.is_call`` after ``import data.gateway.lib``)
    as its full path (``data.gateway.lib.is_call``): (byte offset of the alias, the prefix to insert).

    The RVM's compiler turns a rule reached through an import alias into a lookup of the whole package's virtual
    document, evaluating every rule of the package, where the full path is a call of that one rule: in the shipped
    policy each ``lib.is_call`` evaluated all of lib (``global_deny``, the clock, ...), a third of a call's decision
    and half of a list item's. The meaning is the same; a module where the alias is also a variable or a rule's
    name is left as written."""
    module = ast[0]["ast"] if isinstance(ast, list) and ast else {}
    aliases = dict(filter(None, (_data_import(i) for i in module.get("imports", []))))
    if not aliases:
        return []
    roots: list[tuple[int, str]] = []  # (byte offset, alias)
    others: set[str] = set()

    def walk(node: Any, head: bool) -> None:
        if isinstance(node, dict):
            for kind in ("RefDot", "RefBrack"):
                ref = node.get(kind)
                var = ref.get("refr", {}).get("Var") if isinstance(ref, dict) else None
                if isinstance(var, dict) and var.get("value") in aliases and not head:
                    roots.append((var["span"]["start"], var["value"]))
                    var["_root"] = True
            var = node.get("Var")
            if isinstance(var, dict) and var.get("value") in aliases and (head or not var.get("_root")):
                others.add(var["value"])
            for key, value in node.items():
                if key == "head" and isinstance(value, dict):  # the rule's name and a function's parameters
                    for form in value.values():
                        for part, sub in form.items() if isinstance(form, dict) else ():
                            walk(sub, part in ("refr", "args"))
                else:
                    walk(value, head)
        elif isinstance(node, list):
            for value in node:
                walk(value, head)

    walk(module.get("rules", []), False)
    return [(at, aliases[alias]) for at, alias in roots if alias not in others]


_THREAD = threading.local()
"""Module-level, so it is never deallocated (dropping a thread-local drops every thread's values on one thread)."""
_VMS_PER_THREAD = 4


class RvmPolicy:
    """One revision of the policy, compiled for the RVM; immutable and shared. ``evaluate`` is thread-safe (each
    thread gets its own VM)."""

    interpreter = False
    fallback: tuple[str, ...] = ()
    """Why this revision runs on the interpreter though the RVM was asked for (file:line:col each)."""

    def __init__(self, source: PolicySource, decision_path: str):
        if not _DECISION_PATH.fullmatch(decision_path):
            raise PolicyError([f"decision {decision_path!r}: a rule path such as gateway/decision is expected"])
        self.source = source
        self.revision = source.revision
        self.decision_path = decision_path
        self.entry = "data." + decision_path.replace("/", ".")
        lint(source)  # the supported subset (docs/policy.md): unknown built-ins, names nothing defines, syntax
        self._data = orjson.dumps(source.data).decode()
        self._modules: dict[str, _Module] = {}
        errors, unsupported = [], True
        for name, text in source.modules.items() if not self.interpreter else ():
            try:
                self._modules[name] = _Module(name, text)
            except PolicyError as exc:
                errors += [self._where(e) for e in exc.errors]
                unsupported = unsupported and isinstance(exc, RvmUnsupported)
        if errors:
            raise (RvmUnsupported if unsupported else PolicyError)(errors)
        self._compile()

    def _where(self, line: str) -> str:
        """``name:line:col: msg`` with the file named as the loader names it."""
        name, _, rest = line.partition(":")
        return f"{self.source.where(name)}:{rest}" if name in self.source.modules else line

    def _compile(self) -> None:
        modules = [(name, m.guarded) for name, m in self._modules.items()]
        try:
            program = regorus.Program.compile_from_modules(self._data, modules, [self.entry])
        except Exception as exc:
            where = _AT.search(str(exc))
            mod = self._modules.get(where.group(1)) if where else None
            msg = _first_line(exc)
            kind = RvmUnsupported if "not supported" in msg or "not yet supported" in msg else PolicyError
            if "Unknown function" in msg:  # an OPA built-in (the lint checked) this regorus build lacks altogether
                msg += " (not built into the embedded engine, regorus: its interpreter lacks it too)"
            if mod is None:
                raise kind([self._place(msg)]) from None
            located = self._where(mod._located(exc, False))
            raise kind([located + msg[len(_first_line(exc)) :]]) from None
        # regorus's objects are bound to the thread that made them (pyo3 "unsendable": using or dropping one on
        # another thread panics): the policy keeps the program as bytes, each thread loads its own VM from them.
        self._program = program.serialize_binary()

    def _place(self, msg: str) -> str:
        """An error the RVM gave without a place: placed at the first call of the built-in it names, if any."""
        for fn in re.findall(r"\b([a-z_][a-z0-9_.]*) (?:loops|calls|built-?in)", msg):
            for name, text in self.source.modules.items():
                at = re.search(rf"(?<![\w.]){re.escape(fn)}\s*\(", mask(text))
                if at:
                    return f"{self.source.where(name, at.start())}: {msg}"
        return f"{self.source.root}: {msg}"

    def _new_vm(self) -> Any:
        program, partial = regorus.Program.deserialize_binary(self._program)
        if partial:
            raise PolicyError([f"{self.source.root}: the compiled program did not load whole"])
        vm = regorus.Rvm()
        vm.load_program(program)
        vm.set_data_json(self._data)
        return vm

    def _vm(self) -> Any:
        """This thread's VM for this revision. The VMs live in a per-thread cache that is never dropped from another
        thread (a revision swapped out leaves at most a few behind in each thread, evicted by that thread)."""
        cache: dict[int, tuple[RvmPolicy, Any]] | None = getattr(_THREAD, "vms", None)
        if cache is None:
            cache = _THREAD.vms = {}
        hit = cache.get(id(self))
        if hit is not None and hit[0] is self:
            return hit[1]
        vm = self._new_vm()
        if len(cache) >= _VMS_PER_THREAD:
            cache.pop(next(iter(cache)))
        cache[id(self)] = (self, vm)
        return vm

    def evaluate(self, input: dict[str, Any]) -> Decision:
        """Decide on this thread's VM; every failure is a denial with its reason in ``error``."""
        try:
            text = orjson.dumps(input).decode()
        except TypeError as exc:
            return Decision.failed(f"input not serialisable: {exc}", self.revision)
        return self.evaluate_json(text)

    def evaluate_json(self, input_json: str) -> Decision:
        try:
            out = self._run(self._vm(), input_json)
        except Exception as exc:  # instruction limit, a type error the VM raises, ...
            return Decision.failed(f"evaluation error: {_first_line(exc)[:300]}", self.revision)
        return _result(out, self.revision)

    def evaluate_many(self, inputs: Sequence[dict[str, Any]]) -> list[Decision]:
        """``evaluate`` for a batch (a list's items) on this thread's VM, fetched once. The items of a list mostly
        decide alike: each distinct result is read and checked once, and equal results share one (frozen) Decision."""
        vm = self._vm()
        seen: dict[str, Decision] = {}
        out: list[Decision] = []
        for inp in inputs:
            try:
                text = orjson.dumps(inp).decode()
            except TypeError as exc:
                out.append(Decision.failed(f"input not serialisable: {exc}", self.revision))
                continue
            try:
                raw = self._run(vm, text)
            except Exception as exc:  # as evaluate_json
                out.append(Decision.failed(f"evaluation error: {_first_line(exc)[:300]}", self.revision))
                continue
            decision = seen.get(raw)
            if decision is None:
                decision = seen[raw] = _result(raw, self.revision)
            out.append(decision)
        return out

    def _run(self, vm: Any, input_json: str) -> str:
        vm.set_input_json(input_json)
        return str(vm.execute())

    evaluate_input = evaluate
    """What every local engine's compiled policy answers to (gateway/policy/engines.py)."""

    def decide(self, _evaluator: Any, input: dict[str, Any]) -> Decision:
        """The regopy engine's calling convention (an evaluator per thread): the VM is this thread's already."""
        return self.evaluate(input)


def _result(out: str, revision: str) -> Decision:
    if _UNDEFINED in out:
        if out.strip() == _UNDEFINED:
            return Decision.from_result(None, revision)
        return Decision.failed("evaluation error: the policy's result holds an undefined value", revision)
    try:
        result = orjson.loads(out)
    except orjson.JSONDecodeError as exc:
        return Decision.failed(f"evaluation error: the policy's result is not JSON ({exc})", revision)
    return Decision.from_result(result, revision)


class InterpreterPolicy(RvmPolicy):
    """The same revision on regorus's interpreter (``engine = "regorus"``): strict built-in errors and ``with``,
    at about ten times the RVM's cost. No guard is needed: the interpreter fails ``x := <undefined>``."""

    interpreter = True

    def _compile(self) -> None:
        self._new_vm()  # each thread builds its own interpreter; this one only shows the policy loads
        # The interpreter finds a built-in its build lacks only when a decision calls it: the RVM's compiler (same
        # built-ins) names it now. Its other refusals (with, walk) are its own limits, not the interpreter's.
        try:
            regorus.Program.compile_from_modules(self._data, list(self.source.modules.items()), [self.entry])
        except Exception as exc:
            msg = _first_line(exc)
            if "Unknown function" in msg:
                where = _AT.search(str(exc))
                name = where.group(1) if where else ""
                place = (
                    f"{self.source.where(name)}:{where.group(2)}:{where.group(3)}"
                    if where and name in self.source.modules
                    else str(self.source.root)
                )
                raise PolicyError([f"{place}: {msg} (not built into regorus)"]) from None

    def _new_vm(self) -> Any:
        engine = regorus.Engine()
        try:
            for name, text in self.source.modules.items():
                engine.add_policy(name, ascii_regexes(name, text))
            engine.add_data_json(self._data)
        except Exception as exc:
            raise PolicyError([f"{self.source.root}: {_first_line(exc)}"]) from None
        return engine

    def _run(self, vm: Any, input_json: str) -> str:
        vm.set_input_json(input_json)
        return str(vm.eval_rule_as_json(self.entry))


def compile_regorus(source: PolicySource, decision_path: str, interpreter: bool = False) -> RvmPolicy:
    """The RVM, or the interpreter when asked or when the RVM cannot run this revision as OPA would (logged with
    the places; ``policy.fallback`` keeps them)."""
    if interpreter:
        return InterpreterPolicy(source, decision_path)
    try:
        return RvmPolicy(source, decision_path)
    except RvmUnsupported as exc:
        policy = InterpreterPolicy(source, decision_path)
        policy.fallback = tuple(exc.errors)
        log.warning(
            "policy %s: the RVM cannot run it as OPA would; decided on regorus's interpreter (about ten times "
            "slower) instead:\n  %s",
            source.revision,
            "\n  ".join(exc.errors),
        )
        return policy


def compile_rvm(path: Path, decision_path: str, interpreter: bool = False) -> RvmPolicy:
    return compile_regorus(load_policy(path), decision_path, interpreter)


def on_own_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a thread of its own, joined: its result, or its exception raised here.

    regorus's allocator (mimalloc) keeps a heap per thread, and what a compilation allocates and frees (syntax
    trees, the compiler's tables: ~3 MB for the shipped policy) stays committed in the heap of the thread that
    compiled, for that thread's later allocations. Compiled on the event loop's thread, those pages stayed for the
    process's life; a thread of its own hands its heap back when it ends. (``MIMALLOC_PURGE_DELAY=0`` would too,
    but it makes every decision give back and fault in its pages again: 49 -> ~90 us p50 on the shipped policy.)
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-compile") as pool:  # joined on leaving
        return pool.submit(fn, *args).result()


class RvmEngine:
    """The embedded engine (``engine = "embedded"``, or ``"regorus"`` for the interpreter): decides inline.

    regorus holds the GIL: a worker thread would run no decision in parallel with the event loop, and the hop there
    and back costs more than a decision. ``timeout_ms`` judges the evaluation's own CPU time (a decision that took
    longer is denied); the RVM's instruction limit stops a runaway policy.
    """

    def __init__(self, path: Path, decision_path: str, timeout_ms: int, interpreter: bool = False):
        self._path = path
        self._decision_path = decision_path
        self._timeout = timeout_ms / 1000.0
        self._interpreter = interpreter
        self.name = "regorus" if interpreter else "embedded"
        self._policy = on_own_thread(compile_rvm, path, decision_path, interpreter)

    @property
    def revision(self) -> str:
        return self._policy.revision

    @property
    def path(self) -> Path:
        return self._path

    @property
    def decision_path(self) -> str:
        return self._decision_path

    @property
    def policy(self) -> RvmPolicy:
        return self._policy

    def compile(self, source: PolicySource) -> RvmPolicy:
        """A candidate revision for this engine (a reload compiles it, tests it, then swaps it in)."""
        return compile_regorus(source, self._decision_path, self._interpreter)

    def swap(self, policy: Any) -> None:
        """Install a new revision atomically: a decision reads the policy once, at its start."""
        self._policy = policy

    def _timed(self, policy: RvmPolicy, input: dict[str, Any]) -> Decision:
        t0 = time.thread_time()
        decision = policy.evaluate(input)
        if time.thread_time() - t0 > self._timeout:
            return Decision.failed(f"policy took longer than {self._timeout * 1000:.0f} ms", policy.revision)
        return decision

    async def decide(self, input: dict[str, Any]) -> Decision:
        return self._timed(self._policy, input)

    async def decide_many(self, inputs: Sequence[dict[str, Any]]) -> list[Decision]:
        """Decide several inputs on one revision in one go (a list's items)."""
        policy = self._policy
        t0 = time.thread_time()
        out = policy.evaluate_many(inputs)
        if time.thread_time() - t0 > self._timeout * max(1, len(inputs)):
            return [Decision.failed("policy took too long", policy.revision) for _ in inputs]
        return out

    async def aclose(self) -> None:
        return None
