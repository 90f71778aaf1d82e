"""The shipped policies' table tests, case by case, through the compiled policy the gateway uses; and the table
runner itself: it must catch a wrong expectation, show a diff, and refuse a malformed table."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from gateway.decide import Decider, Request
from gateway.identity import Agent
from gateway.metrics import Metrics
from gateway.policy import PolicyError
from gateway.policy.embedded import CompiledPolicy, compile_policy, new_evaluator
from gateway.policy.loader import load_policy
from gateway.policy.tables import INPUT_SKELETON, Case, load_tables, parse_table, report, run_policy_tables
from tests.conftest import REPO

SHIPPED = REPO / "rego"
_POLICY = compile_policy(SHIPPED, "gateway/decision")
_CASES = load_tables(_POLICY.source)
_EVALUATOR = new_evaluator()


def test_the_shipped_policies_come_with_at_least_60_cases_over_every_team() -> None:
    assert len(_CASES) >= 60
    files = {Path(c.file).name for c in _CASES}
    assert {"gateway_test.yaml", "platform_test.yaml", "research_test.yaml"} <= files
    assert len({c.label for c in _CASES}) == len(_CASES), "case names repeat within a file"


@pytest.mark.parametrize("case", _CASES, ids=[f"{Path(c.file).stem}: {c.name}" for c in _CASES])
def test_shipped_case(case: Case) -> None:
    from gateway.policy.tables import check

    result = check(case, _POLICY.decide(_EVALUATOR, case.input))
    assert result.ok, f"{'; '.join(result.problems)}\n{result.diff}"


def test_every_denial_in_the_shipped_tables_gives_a_reason() -> None:
    for case in _CASES:
        decision = _POLICY.decide(_EVALUATOR, case.input)
        assert decision.error is None, case.label
        assert decision.allow or decision.reasons, case.label


def test_the_table_skeleton_is_the_input_the_gateway_builds() -> None:
    """Tables fill inputs from INPUT_SKELETON: it must have exactly the shape Decider.build_input produces."""
    decider = Decider(object(), Metrics(), 100)  # type: ignore[arg-type]
    req = Request(agent=Agent("a", "t", ("r",), "api_key"), action="tools/call", view=None, name="s__x")
    built = decider.build_input(req, "s", tool="x", arguments={"k": "v"})

    assert set(built) == set(INPUT_SKELETON)
    for key in ("agent", "session", "request"):
        assert set(built[key]) == set(INPUT_SKELETON[key]), key


def _policy_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "rego"
    shutil.copytree(SHIPPED, dst)
    return dst


def test_a_wrong_expectation_fails_with_a_diff(tmp_path: Path) -> None:
    policy = _policy_copy(tmp_path)
    (policy / "extra_test.yaml").write_text(
        "cases:\n"
        "  - name: research may convert (it may not)\n"
        "    input: {agent: {id: r, team: research}, server: time, tool: convert_time, arguments: {}}\n"
        "    allow: true\n"
        "  - name: wrong reason\n"
        "    input: {agent: {id: r, team: research}, server: echo, tool: echo}\n"
        "    reasons: [some other reason]\n"
        "  - name: missing reason\n"
        "    input: {agent: {id: r, team: research}, server: echo, tool: echo}\n"
        "    reasons_include: [no rule allows this request, another one]\n"
        "  - name: containment differs\n"
        "    input: {agent: {id: c, team: platform, roles: [ci]}, server: sh, tool: run, arguments: {command: ls}}\n"
        "    result: {containment: {network: host}}\n"
        "  - name: this one passes\n"
        "    input: {agent: {id: c, team: platform, roles: [ci]}, server: sh, tool: run, arguments: {command: ls}}\n"
        "    allow: true\n"
        "    reasons_include: []\n"
    )
    results = [r for r in run_policy_tables(compile_policy(policy, "gateway/decision")) if "extra_test" in r.case.file]
    lines, failed = report(results)
    assert failed == 4
    text = "\n".join(lines)
    assert "FAIL" in text and "PASS" in text and text.endswith("1 passed, 4 failed")
    assert "allow is false, expected true" in text
    assert '-    "some other reason"' in text and '+    "no rule allows this request"' in text
    assert "missing reasons: another one" in text
    assert '-    "network": "host"' in text and '+    "network": "none"' in text


def test_an_evaluation_error_fails_the_case(tmp_path: Path) -> None:
    policy = _policy_copy(tmp_path)
    (policy / "extra_test.yaml").write_text(
        "cases:\n"
        "  - name: research fetch with no request time cannot be decided\n"
        "    input: {agent: {id: r, team: research}, server: fetch, tool: fetch,\n"
        "            arguments: {url: 'https://arxiv.org/'}, request: {time_ns: not-a-time}}\n"
        "    allow: false\n"
    )
    [result] = [r for r in run_policy_tables(compile_policy(policy, "gateway/decision")) if "extra_test" in r.case.file]
    assert not result.ok
    assert result.problems[0].startswith("evaluation failed")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cases: [{name: x, input: {}}]", "cases[0]: a case must expect something"),
        ("cases: [{name: x, allow: maybe}]", "cases[0].allow: Input should be a valid boolean"),
        ("cases: [{name: x, allow: true, alow: true}]", "cases[0].alow: unknown key"),
        ("defaults: {}\n", "cases: Field required"),
        ("cases: [unclosed", "cannot parse"),
    ],
)
def test_a_malformed_table_is_refused_with_file_and_key(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_table("rego/x_test.yaml", text)
    assert any(e.startswith("rego/x_test.yaml: ") and expected in e for e in err.value.errors), err.value.errors


def test_json_tables_work_too(tmp_path: Path) -> None:
    policy = _policy_copy(tmp_path)
    (policy / "more_test.json").write_text(
        '{"cases": [{"name": "unknown team", "input": {"agent": {"team": "x"}}, "allow": false,'
        ' "reasons": ["no policy for this agent\'s team"]}]}'
    )
    source = load_policy(policy)
    compiled = CompiledPolicy(source, "gateway/decision")
    results = [r for r in run_policy_tables(compiled) if r.case.file.endswith("more_test.json")]
    assert len(results) == 1 and results[0].ok


# --- annotations: the tables decide on what the tools' upstreams declare (issue 11, finding 2) ------------------


def test_a_case_gets_the_annotations_its_tool_declares_unless_it_sets_them(tmp_path: Path) -> None:
    """The tables once decided sh run without its destructiveHint, so they passed what the gateway denied."""
    policy = _policy_copy(tmp_path)
    (policy / "extra_test.yaml").write_text(
        "defaults: {agent: {id: c, team: platform, roles: [ci]}, action: tools/call}\n"
        "cases:\n"
        "  - name: declared\n"
        "    input: {server: sh, tool: run, arguments: {command: ls}}\n"
        "    allow: true\n"
        "  - name: set by the case\n"
        "    input: {server: sh, tool: run, arguments: {command: ls}, annotations: {}}\n"
        "    allow: true\n"
        "  - name: listed\n"
        "    input: {action: tools/list, server: files, tool: write_file}\n"
        "    allow: true\n"
        "  - name: not catalogued\n"
        "    input: {server: echo, tool: echo}\n"
        "    allow: true\n"
    )
    cases = {c.name: c for c in load_tables(load_policy(policy)) if c.file.endswith("extra_test.yaml")}
    assert cases["declared"].input["annotations"] == {"destructiveHint": True, "openWorldHint": True}
    assert cases["set by the case"].input["annotations"] == {}
    assert cases["listed"].input["annotations"]["destructiveHint"] is True
    assert cases["not catalogued"].input["annotations"] == {}


def test_with_a_config_the_built_in_upstreams_own_declarations_win(tmp_path: Path) -> None:
    from gateway.cli import _load
    from gateway.policy.catalogue import builtin_catalogue

    cfg = _load(str(REPO / "examples" / "contained.toml"))
    policy = _policy_copy(tmp_path)
    (policy / "catalogue.json").write_text('{"sh": {"run": {"destructiveHint": false}}}')
    source = load_policy(policy)
    name = "ci may run an allow-listed command, without network"
    run = next(c for c in load_tables(source) if c.name == name)
    assert run.input["annotations"] == {"destructiveHint": False}
    run = next(c for c in load_tables(source, builtin_catalogue(cfg)) if c.name == name)
    assert run.input["annotations"]["destructiveHint"] is True


@pytest.mark.timeout(300)
def test_the_shipped_catalogue_is_what_the_shipped_upstreams_declare() -> None:
    """rego/catalogue.json is a cache: refreshed with `mcp-gateway policy catalogue` (docs/policy.md)."""
    import anyio

    from gateway.cli import _load
    from gateway.policy.catalogue import annotations_of, builtin_catalogue, list_tools

    shipped = load_policy(SHIPPED).catalogue
    contained = _load(str(REPO / "examples" / "contained.toml"))
    for name, tools in builtin_catalogue(contained).items():
        assert shipped[name] == tools, name
    demo = _load(str(REPO / "gateway.toml"))
    for up in demo.upstreams:
        listed = annotations_of(anyio.run(list_tools, demo, up, 60.0))
        assert shipped[up.name] == listed, up.name
    fs = next(u for u in contained.upstreams if u.name == "fs")
    assert fs.command is not None and fs.cwd is not None
    if (contained.base_dir / fs.cwd).is_dir():  # contained: listed here uncontained, in an empty directory
        empty = tempfile.mkdtemp()
        bare = fs.model_copy(update={"containment": None, "command": [*fs.command[:-1], empty]})
        assert shipped["fs"] == annotations_of(anyio.run(list_tools, contained, bare, 60.0))


def test_a_team_may_leave_out_deny_containment_and_decision(tmp_path: Path) -> None:
    """The router decides from what a team defines; what it leaves out is nothing denied, no narrowing (the recipe
    once required a decision line naming deny and containment, and every decision failed without them)."""
    policy = _policy_copy(tmp_path)
    (policy / "teams" / "minimal.rego").write_text(
        "package gateway.teams.minimal\n\nimport rego.v1\n\ndefault grants := false\n\n"
        'grants if input.server == "time"\n'
    )
    (policy / "teams" / "custom.rego").write_text(
        "package gateway.teams.custom\n\nimport rego.v1\n\n"
        'decision := {"allow": input.server == "time", "reasons": ["custom"], "note": "own decision"}\n'
    )
    compiled = compile_policy(policy, "gateway/decision")
    ev = new_evaluator()

    def decide(team: str, server: str, action: str = "tools/call", **extra: object) -> tuple[bool, list[str], dict]:
        inp = {
            **INPUT_SKELETON,
            "agent": {**INPUT_SKELETON["agent"], "id": "a", "team": team},
            "action": action,
            "server": server,
            "tool": "get_current_time",
            **extra,
        }
        d = compiled.decide(ev, inp)
        assert d.error is None, d.error
        return d.allow, sorted(d.reasons), d.result

    assert decide("minimal", "time")[:2] == (True, [])
    assert decide("minimal", "sh")[:2] == (False, ["no rule allows this request"])
    assert decide("minimal", "time", "tools/list")[:2] == (True, [])
    assert decide("minimal", "time", "logging/setLevel")[:2] == (False, ["no rule allows this request"])
    assert decide("minimal", "time", agent={"id": "compromised-bot", "team": "minimal", "roles": []})[:2] == (
        False,
        ["agent compromised-bot is suspended"],
    )
    allow, reasons, result = decide("custom", "time")
    assert allow and reasons == ["custom"] and result["note"] == "own decision"
    assert decide("nosuchteam", "time")[:2] == (False, ["no policy for this agent's team"])
