"""The embedded engine hands rego-cpp only the parts of the input a policy reads (it parses every node of the
input for every decision); that must never change a decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policy.embedded import compile_policy, new_evaluator
from gateway.policy.inputs import input_shape, prune
from gateway.policy.loader import PolicySource
from gateway.policy.tables import complete_input, load_tables
from tests.conftest import REPO


def _shape(body: str) -> object:
    return input_shape(PolicySource({"p.rego": "package p\n\nimport rego.v1\n\n" + body}, {}, "r", Path(".")))


@pytest.mark.parametrize(
    ("body", "shape"),
    [
        ('x if input.agent.team == "a"', {"agent": frozenset({"team"})}),
        ("x if { input.agent.team; input.agent.roles[_] }", {"agent": frozenset({"team", "roles"})}),
        ("x if input.agent.claims.groups[0]", {"agent": frozenset({"claims"})}),
        ("x if input.arguments[k]", {"arguments": None}),
        ("x if { some k, v in input.arguments }", {"arguments": None}),
        ("x if input.agent == {}\n\ny if input.agent.id", {"agent": None}),
        ("x := count(input.request)", {"request": None}),
        ('x := "input.session is only text" # input.session in a comment', {}),
        ("import input.agent as a\n\nx if a.id", {"agent": None}),
        ("x := data.input.y", {}),
        ("my_input := 1", {}),
        (
            'x := $"on {input.server}: {concat(",", [input.agent.id, "}"])}"',
            {"server": None, "agent": frozenset({"id"})},
        ),
        ("x := $`{input.tool}`", {"tool": None}),
        ('x := $"{ {"k": input.prompt}["k"] }"', {"prompt": None}),
        ('x := $"not code: \\{input.tool}"', {}),
    ],
)
def test_the_shape_keeps_every_field_the_policy_reads(body: str, shape: object) -> None:
    assert _shape(body) == shape


@pytest.mark.parametrize(
    "body",
    [
        "x := input",
        'x := object.get(input, "agent", {})',
        'x := input["agent"]',
        "x := walk(input)",
        "import input\n\nx := 1",
        "x := input[k]",
    ],
)
def test_any_other_use_of_input_keeps_all_of_it(body: str) -> None:
    assert _shape(body) is None


def test_prune_keeps_what_the_shape_names() -> None:
    doc = complete_input({"agent": {"id": "a", "team": "t", "roles": ["r"]}, "server": "s", "arguments": {"x": 1}})
    pruned = prune(doc, {"agent": frozenset({"team", "nope"}), "arguments": None, "missing": None})
    assert pruned == {"agent": {"team": "t"}, "arguments": {"x": 1}}
    assert prune(doc, None) is doc


@pytest.mark.parametrize("policy", ["rego", "conformance/policy/subset"])
def test_pruning_changes_no_decision(policy: str) -> None:
    compiled = compile_policy(REPO / policy, "gateway/decision")
    assert compiled.input_shape is not None and "session" not in compiled.input_shape
    ev = new_evaluator()
    cases = load_tables(compiled.source)
    pruned = [compiled.decide(ev, c.input) for c in cases]
    compiled.input_shape = None
    whole = [compiled.decide(ev, c.input) for c in cases]
    assert [(d.allow, d.reasons, d.result, d.error) for d in pruned] == [
        (d.allow, d.reasons, d.result, d.error) for d in whole
    ]


def test_pruning_changes_no_decision_of_a_policy_with_template_strings(tmp_path: Path) -> None:
    """References inside template strings are reads: a blocked-list check built with one must still fire."""
    (tmp_path / "p.rego").write_text(
        "package gateway\n\nimport rego.v1\n\n"
        'blocked := {"sh__run"}\n\n'
        'deny contains "blocked" if $"{input.server}__{input.tool}" in blocked\n\n'
        'decision := {"allow": count(deny) == 0, "reasons": [r | some r in deny]}\n'
    )
    compiled = compile_policy(tmp_path, "gateway/decision")
    decision = compiled.decide(new_evaluator(), complete_input({"server": "sh", "tool": "run"}))
    assert not decision.allow and decision.reasons == ("blocked",)
