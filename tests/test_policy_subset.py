"""The Rego subset docs/policy.md promises for the embedded engine: every vector of conformance/policy/subset, and
the documented differences from OPA, which must stay true (a regopy upgrade that fixes one should update the docs).
Expected values in the vectors are OPA's; conformance/run policy checks them on OPA's own evaluator as well."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.policy.embedded import compile_policy, new_evaluator
from gateway.policy.tables import Case, check, load_tables
from tests.conftest import REPO

_SUBSET = compile_policy(REPO / "conformance" / "policy" / "subset", "gateway/decision")
_CASES = load_tables(_SUBSET.source)
_EV = new_evaluator()


@pytest.mark.parametrize("case", _CASES, ids=[c.name for c in _CASES])
def test_subset_vector(case: Case) -> None:
    result = check(case, _SUBSET.decide(_EV, case.input))
    assert result.ok, result.diff


def _eval(rule_body: str, input: Any = None) -> tuple[bool, str]:
    """(ok, raw output) of ``r := <rule_body>`` on rego-cpp, read without the JSON decoding that hides bugs."""
    from regopy import Interpreter
    from regopy.rego_shared import rego_bundle_query, rego_output_ok, rego_output_string

    b = Interpreter()
    b.add_module("t.rego", "package t\n\nimport rego.v1\n\n" + rule_body + "\n")
    bundle = b.build("x := data.t.r", ["t/r"])
    ev = new_evaluator()
    ev.set_input_term(orjson.dumps(input or {}).decode())
    out = rego_bundle_query(ev._impl, bundle._impl)
    return rego_output_ok(out), rego_output_string(out)


def test_documented_difference_not_of_an_undefined_argument_is_true() -> None:
    """OPA: `not f(input.missing)` is undefined (the rule does not fire); rego-cpp: true. Bind with object.get."""
    ok, out = _eval("default r := false\n\nr if not is_string(input.missing)")
    assert ok and '"x":true' in out.replace(" ", "")


def test_documented_difference_sprintf_quotes_computed_strings() -> None:
    ok, out = _eval('r := sprintf("host %v", [lower(input.h)])', {"h": "EXAMPLE"})
    assert '"host "example""' in out  # not valid JSON: the decision fails (a denial with an error)
    ok, out = _eval('r := concat("", ["host ", lower(input.h)])', {"h": "EXAMPLE"})
    assert ok and '"host example"' in out


def test_a_result_rego_cpp_cannot_serialise_denies_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text(
        "package gateway\n\nimport rego.v1\n\n"
        'decision := {"allow": true, "reasons": [sprintf("host %v", [lower(input.h)])]}\n'
    )
    d = compile_policy(tmp_path, "gateway/decision").decide(new_evaluator(), {"h": "X"})
    assert not d.allow and d.error and "not valid JSON" in d.error and "concat" in d.error


def test_documented_difference_function_argument_as_a_key_in_a_comprehension() -> None:
    ok, out = _eval('d := {"a": [1], "b": [2]}\n\nf(k) := {x | some x in d[k]}\n\nr := f("a")')
    assert ok and "[1,2]" in out.replace(" ", "")  # OPA: [1]


def test_documented_difference_lower_is_ascii_only() -> None:
    ok, out = _eval('r := lower("ÉCOLE")')
    assert ok and '"École"' in out  # OPA: "école"


def test_documented_difference_object_union_is_not_recursive() -> None:
    ok, out = _eval('r := object.union({"a": {"b": 1}}, {"a": {"c": 2}})')
    assert ok and '{"a":{"c":2}}' in out.replace(" ", "")  # OPA: {"a": {"b": 1, "c": 2}}


def test_documented_difference_urlquery_encode_spaces() -> None:
    ok, out = _eval('r := urlquery.encode("a b")')
    assert ok and '"a%20b"' in out  # OPA: "a+b"


def test_documented_difference_comprehension_heads_are_terms(tmp_path: Path) -> None:
    from gateway.policy import PolicyError

    (tmp_path / "p.rego").write_text("package gateway\n\nimport rego.v1\n\ndecision := [x * 2 | some x in [1]]\n")
    with pytest.raises(PolicyError, match="Invalid collection"):
        compile_policy(tmp_path, "gateway/decision")
