"""Rego coverage parity: each vector (a small module defining ``out``, and an input) is decided by every local
engine (regorus's RVM, the default; regorus's interpreter; regopy) through the gateway's own wrapper, and by OPA's
own Go evaluator (``opa-golib-python-bindings``, installed by scripts/setup.sh --test; these tests run whenever it is
importable). The decision is ``{"allow": true, "reasons": [], "out": out}``: an undefined ``out`` denies.

An engine must decide as OPA does, or refuse the module at load (file:line:col), or be listed in ``KNOWN`` with
the difference it makes, which must never allow what OPA denies. The vectors were found by probing the RVM: each
one it got wrong before the wrapper's guards (the ``:=`` of an undefined value, an ``else`` after a loop) is here.
"""

# ruff: noqa: E501  (the vectors read best one per line)
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import regorus

from gateway.policy.decision import PolicyError
from gateway.policy.engines import LOCAL_ENGINES, compile_source
from gateway.policy.loader import PolicySource
from gateway.policy.rvm import RvmPolicy, RvmUnsupported
from tests.conftest import REPO

opa_bindings = pytest.importorskip("opa_bindings", reason="opa-golib-python-bindings (OPA's evaluator) not installed")

_HARNESS = '\ndecision := {"allow": true, "reasons": [], "out": out}\n'
_Q = {"q.rego": "package q.x\nimport rego.v1\ng := 1\n", "r.rego": "package q.y\nimport rego.v1\ng := 2\nd := 5\n"}
_IN = {
    "t": "x",
    "f": False,
    "n": None,
    "arr": [1, 2],
    "obj": {"a": 1, "b": 2},
    "roles": ["ci"],
    "s": 'a\nb\t"c"\\d é \u2028 \U0001f600',
    "nb": "a\u00a0b\u2029c d",
}

VECTORS: list[tuple[str, str, dict[str, Any]]] = [
    # assignment of an undefined value fails the body (the RVM let it through: guarded by the wrapper)
    ("assign undefined", "out := 1 if { v := input.missing }", _IN),
    ("assign undefined, then else", "out := v if { v := input.missing } else := 3", _IN),
    ("assign undefined virtual doc, then else", "out := v if { v := data.q[input.t].d } else := 3", _IN),
    ("assign defined virtual doc", "out := v if { v := data.q[input.t].d } else := 3", {**_IN, "t": "y"}),
    ("assign undefined in comprehension", "out := [v | v := data.q[input.t].d]", _IN),
    ("wildcard assign undefined", "out := 1 if { _ := input.missing }", _IN),
    ("destructure undefined", "out := 1 if { [a, b] := input.missing }", _IN),
    ("destructure", "out := a + b if { [a, b] := input.arr }", _IN),
    ("assign false", "out := 1 if { v := input.f }", _IN),
    ("assign null", "out := 1 if { v := input.n }", _IN),
    ("assign set union", "s1 contains 1 if true\nout := r if { r := set() | s1 }", _IN),
    ("assign parenthesised", "out := v if { v := (1 + 2) * 3 }", _IN),
    ("assign strings with brackets", 'out := [a, b] if { a := "(]"; b := `[)` }', _IN),
    ("function on undefined", "f(x) := x\nout := 1 if { v := f(input.missing) }", _IN),
    # else chains
    ("else without body", "out := 1 if { input.missing } else := 2", _IN),
    ("else chain", 'out := "a" if { input.f } else := "b" if { input.n } else := "c"', _IN),
    (
        "else after a helper that iterates",
        'h if { some r in input.roles; r == "x" }\nout := "a" if { h } else := "b"',
        _IN,
    ),
    ("iteration that matches, no else", 'out := "a" if { some r in input.roles; r == "ci" }', _IN),
    ("default", 'default out := "d"\nout := "a" if { some r in input.roles; r == "x" }', _IN),
    # iteration, comprehensions, every
    ("some in set", "out contains x if { some x in input.arr; x > 1 }", _IN),
    ("object comprehension", "out := {k: v | some k, v in input.obj; v > 1}", _IN),
    ("every true", "default out := 0\nout := 1 if { every x in input.arr { x > 0 } }", _IN),
    ("every over undefined", "default out := 0\nout := 1 if { every x in input.missing { x > 0 } }", _IN),
    ("not undefined", "out := 1 if { not input.missing }", _IN),
    ("count of comprehension", "out := count([1 | input.missing])", _IN),
    # dynamic virtual documents (the shipped router: data.gateway.teams[input.agent.team])
    ("dynamic package lookup", "out := data.q[input.t].g", _IN),
    ("dynamic package document", "out := data.q[input.t]", {**_IN, "t": "y"}),
    # references through an imported package (the RVM's build spells them as full paths: test below)
    ("imported rule", "import data.q.y\nout := y.d", _IN),
    ("imported rule first in a body", "import data.q.y\nout := 1 if { y.d == 5; y.g }", _IN),
    (
        "imported in a comprehension and a not",
        "import data.q.y\nout := [y.d, count([1 | y.g == 2])] if not y.g == 3",
        _IN,
    ),
    ("imported package indexed", 'import data.q\nout := [q.y.d, q["x"].g, q[input.t].g, q.y]', _IN),
    ("imported with as", "import data.q.y as z\nout := z.d", _IN),
    ("import shadowed by a variable", "import data.q.y\nout := [v, data.q.y.d] if { y := 3; v := y }", _IN),
    ("import shadowed by a parameter", "import data.q.y\nf(y) := y + 1\nout := [f(1), y.d]", _IN),
    # built-ins and strings (regopy reads escaped strings two ways; regorus reads them as OPA does)
    ("string built-ins", "out := [count(input.s), upper(input.s), indexof(input.s, `é`)]", _IN),
    (
        "string regex",
        'out := [regex.match(`\\s`, input.s), regex.match(`^a\\nb`, input.s), contains(input.s, "\\"c\\"")]',
        _IN,
    ),
    ("string split", 'out := split(input.s, "\\n")', _IN),
    (
        "regex classes are RE2's ASCII ones",
        'out := [regex.match(`\\s`, input.nb), regex.split(`\\s+`, input.nb), regex.match(`^\\w+$`, "é"), regex.match(`[\\d]`, "٣")]',
        _IN,
    ),
    (
        "unicode literal",
        'out := input.s == concat("", ["a\\nb\\t\\"c\\"\\\\d \\u00e9 \\u2028 ", "\\ud83d\\ude00"])',
        _IN,
    ),
    ("sprintf numbers and strings", 'out := sprintf("%v %d %s", [1.5, 3, "x"])', _IN),
    (
        "glob",
        'out := [glob.match("*.github.com", ["."], "api.github.com"), glob.match("papers/**", ["/"], "papers/a/b")]',
        _IN,
    ),
    (
        "time",
        'out := [time.clock(1700000000000000000), time.weekday(1700000000000000000), time.parse_rfc3339_ns("2026-01-02T03:04:05+00:00")]',
        _IN,
    ),
    ("object.get", 'out := object.get(input.obj, "z", "d")', _IN),
    ("trim and replace", 'out := [trim_prefix("./a", "./"), trim_space("  x "), replace("a.b", ".", "/")]', _IN),
    ("numbers", "out := [10 / 4, 7 % 3, 1 == 1.0, 2 * 3.5]", _IN),
    ("json.marshal", 'out := json.marshal({"b": [1, 2], "a": null})', _IN),
    ("sets", "out := [{1, 2} | {3}, {1, 2} & {2}, {1, 2} - {1}]", _IN),
]

_NON_BMP = "regorus counts a character outside the BMP (an emoji) as 2 where OPA counts 1"
_ESCAPED = "rego-cpp reads strings in their escaped spelling (docs/policy.md, the regopy engine)"
KNOWN: dict[tuple[str, str], str] = {
    ("embedded", "sprintf of an array"): "the RVM prints [1,2] where OPA prints [1, 2] (messages only)",
    ("embedded", "string built-ins"): _NON_BMP,
    ("regorus", "string built-ins"): _NON_BMP,
    ("regopy", "string built-ins"): _ESCAPED,
    ("regopy", "string regex"): _ESCAPED,
    ("regopy", "string split"): _ESCAPED,
    ("regopy", "dynamic package document"): "rego-cpp leaves a whole package read by a dynamic key undefined",
}
"""(engine, vector) -> how it differs from OPA. Only differences that never allow what OPA denies."""

VECTORS.append(("sprintf of an array", 'out := sprintf("%v", [input.arr])', _IN))


def _opa(module: str, inp: dict[str, Any]) -> tuple[bool, Any] | None:
    opa = opa_bindings.OpaEngine()
    try:
        opa.add_policy("p.rego", module)
        for name, text in _Q.items():
            opa.add_policy(name, text)
        result = opa.eval_document("gateway.decision", inp)
    except Exception:  # undefined or an error: a denial
        return None
    finally:
        opa.close()
    return result["allow"], result["out"]


@pytest.mark.parametrize("engine", LOCAL_ENGINES)
@pytest.mark.parametrize(("name", "body", "inp"), VECTORS, ids=[v[0] for v in VECTORS])
def test_each_engine_decides_as_opa_does(engine: str, name: str, body: str, inp: dict[str, Any]) -> None:
    module = "package gateway\nimport rego.v1\n" + body + _HARNESS
    want = _opa(module, inp)
    try:
        policy = compile_source(PolicySource({"p.rego": module, **_Q}, {}, "v", Path("v")), "gateway/decision", engine)
    except PolicyError as exc:  # refused at load: never mis-evaluated
        assert all(":" in e for e in exc.errors), exc.errors
        return
    d = policy.evaluate_input(inp)
    got = (d.allow, d.result.get("out")) if d.error is None else None
    if (engine, name) in KNOWN:
        assert not (got is not None and got[0] and want is None), f"{engine} allows what OPA denies: {got}"
        return
    assert got == want, f"{engine}: {got} (error {d.error}); OPA: {want}"


@pytest.mark.parametrize(
    "body",
    [
        'out := "a" if { some r in input.roles; r == "x" } else := "b"',
        'out := "a" if { input.roles[_] == "x" } else := "b"',
        'f(x) := "a" if { some i; input.roles[i] == x } else := "b"\nout := f("x")',
        "out := [x | walk(input.obj, [_, x]); is_number(x)]",
    ],
)
def test_what_the_rvm_cannot_run_as_opa_does_is_decided_on_the_interpreter(body: str) -> None:
    """The RVM leaves an else after a failed loop undefined where OPA takes it, and cannot compile walk: such a
    revision is never run on the RVM; the embedded engine decides it on regorus's interpreter, saying where."""
    module = "package gateway\nimport rego.v1\n" + body + _HARNESS
    source = PolicySource({"p.rego": module}, {}, "v", Path("/v"))
    with pytest.raises(RvmUnsupported) as exc:
        RvmPolicy(source, "gateway/decision")
    assert exc.value.errors[0].startswith("/v/p.rego:3:"), exc.value.errors
    want = _opa(module, _IN)
    assert want is not None
    for engine in LOCAL_ENGINES:
        policy = compile_source(source, "gateway/decision", engine)
        assert policy.fallback == (tuple(exc.value.errors) if engine == "embedded" else ())
        d = policy.evaluate_input(_IN)
        assert (d.allow, d.result.get("out")) == want, engine


def test_a_rule_reached_through_an_import_is_called_alone_on_the_rvm() -> None:
    """``lib.is_call`` after ``import data.gateway.lib``: the RVM's compiler made it a lookup of lib's whole virtual
    document (every rule of lib evaluated, at each use); the embedded engine spells it as the full path, a call of
    that rule alone. Same meaning (the vectors above); this checks the compiled program."""
    lib = 'package gateway.lib\nimport rego.v1\nis_call if input.action == "tools/call"\nclock := time.clock(0)\n'
    team = "package gateway.teams.t\nimport data.gateway.lib\nimport rego.v1\ngrants if lib.is_call\n"
    router = 'package gateway\nimport rego.v1\ndecision := {"allow": data.gateway.teams.t.grants, "reasons": []}\n'
    source = PolicySource({"lib.rego": lib, "t.rego": team, "g.rego": router}, {}, "v", Path("v"))
    policy = RvmPolicy(source, "gateway/decision")
    assert policy.evaluate({"action": "tools/call"}).allow
    program, _ = regorus.Program.deserialize_binary(policy._program)
    listing = program.generate_listing()
    assert "CallRule     r1 ← data.gateway.lib.is_call" in listing, listing
    assert "VirtualDataDocumentLookup" not in listing, listing


def test_what_no_engine_can_compile_is_refused_with_its_place() -> None:
    module = 'package gateway\nimport rego.v1\n\ndecision := {"allow": x, "reasons": []} if {\n\tx := input.a with input.a as true\n}\n'
    with pytest.raises(PolicyError) as exc:
        compile_source(PolicySource({"p.rego": module}, {}, "v", Path("/v")), "gateway/decision", "embedded")
    assert exc.value.errors[0].startswith("/v/p.rego:5:"), exc.value.errors


@pytest.mark.parametrize("engine", ["embedded", "regorus"])
def test_a_built_in_regorus_lacks_is_refused_at_load_with_its_place(engine: str) -> None:
    """crypto.sha256 is an OPA built-in this regorus build lacks: refused at load, never a failure at the first
    call that reaches it (the interpreter alone would only find out then)."""
    module = 'package gateway\nimport rego.v1\n\ndecision := {"allow": crypto.sha256("a") != "", "reasons": []}\n'
    with pytest.raises(PolicyError) as exc:
        compile_source(PolicySource({"p.rego": module}, {}, "v", Path("/v")), "gateway/decision", engine)
    assert exc.value.errors[0].startswith("/v/p.rego:4:"), exc.value.errors
    assert "crypto.sha256" in exc.value.errors[0]


_AIOHTTP_FIRST = """
import sys
from pathlib import Path
import gateway.policy.opa  # aiohttp (and its C++ frozenlist) imported before anything loads rego-cpp
from gateway.policy.engines import compile_policy
from gateway.policy.loader import load_policy
from gateway.policy.tables import load_tables
policy = compile_policy(Path("rego"), "gateway/decision", "regopy")
print(all(policy.evaluate_input(c.input).error is None for c in load_tables(load_policy(Path("rego")))))
"""


def test_regopy_decides_when_the_opa_engine_was_imported_first() -> None:
    """aiohttp's frozenlist, loaded before rego-cpp, corrupted rego-cpp's heap (double free deciding the tables)."""
    out = subprocess.run([sys.executable, "-c", _AIOHTTP_FIRST], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"
