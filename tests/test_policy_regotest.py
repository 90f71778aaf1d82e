"""`mcp-gateway policy test` on Rego tests (*_test.rego) and coverage, run as a policy author runs it."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from gateway.policy.loader import load_policy
from gateway.policy.regotest import discover, new_engine, parse_modules
from tests.conftest import REPO, gateway_cli

FIXTURE = REPO / "tests" / "fixtures" / "regotest"
PASSING = "ops_may_read|delete_denied|size_limit"


def _fixture(tmp_path: Path) -> Path:
    dst = tmp_path / "pol"
    shutil.copytree(FIXTURE, dst)
    return dst


def test_rego_tests_pass_fail_error_and_skip_as_opa_test_reports_them() -> None:
    proc = gateway_cli("policy", "test", str(FIXTURE))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "FAILURES" in out and "SUMMARY" in out
    assert "data.gateway_test.test_ops_may_read: PASS (" in out
    assert "data.gateway_test.test_wrong_expectation: FAIL (" in out
    assert f"{FIXTURE}/policy_test.rego:19:1: test_wrong_expectation is undefined" in out
    assert "data.gateway_test.todo_test_later: SKIPPED" in out
    assert "PASS: 3/6" in out and "FAIL: 1/6" in out and "SKIPPED: 1/6" in out and "ERROR: 1/6" in out


def test_a_function_mock_the_engine_would_ignore_is_an_error_at_its_place() -> None:
    proc = gateway_cli("policy", "test", str(FIXTURE), "--run", "mocks_a_function")
    assert proc.returncode == 1
    assert "data.gateway_test.test_mocks_a_function: ERROR" in proc.stdout
    assert f"{FIXTURE}/policy_test.rego:24:33: `with data.gateway.double as ...` replaces a function" in proc.stdout


def test_run_selects_tests_and_a_clean_run_prints_only_the_counts() -> None:
    proc = gateway_cli("policy", "test", str(FIXTURE), "--run", PASSING)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "PASS: 3/3"
    verbose = gateway_cli("policy", "test", str(FIXTURE), "--run", PASSING, "-v")
    assert verbose.returncode == 0
    lines = verbose.stdout.splitlines()
    assert lines[0] == f"{FIXTURE}/policy_test.rego:"
    assert [ln.split(":")[0] for ln in lines[1:4]] == [
        "data.gateway_test.test_ops_may_read",
        "data.gateway_test.test_delete_denied",
        "data.gateway_test.test_size_limit_from_data",
    ]
    assert lines[-1] == "PASS: 3/3"
    none = gateway_cli("policy", "test", str(FIXTURE), "--run", "no_such_test")
    assert none.returncode == 2 and "no test matches --run" in none.stderr


def test_a_rego_test_that_does_not_parse_is_reported_with_its_place(tmp_path: Path) -> None:
    pol = _fixture(tmp_path)
    (pol / "broken_test.rego").write_text("package broken_test\nimport rego.v1\ntest_x if {\n  1 ==\n}\n")
    proc = gateway_cli("policy", "test", str(pol))
    assert proc.returncode == 2
    assert f"{pol}/broken_test.rego:5:1: " in proc.stderr, proc.stderr


def test_coverage_reports_the_lines_and_rules_no_test_exercised_and_the_threshold_fails() -> None:
    proc = gateway_cli("policy", "test", str(FIXTURE), "--run", "ops_may_read", "--coverage")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert f"{FIXTURE}/policy.rego: 54.5% (6/11 lines); not covered: lines 7, 15, 17, 20, 24" in out
    assert f"deny at {FIXTURE}/policy.rego:15: never fired" in out
    assert f"deny at {FIXTURE}/policy.rego:20: never fired" in out
    assert f"double at {FIXTURE}/policy.rego:24: not fully evaluated" in out
    assert "deny and grant rules: 1/3 covered" in out
    low = gateway_cli("policy", "test", str(FIXTURE), "--run", "ops_may_read", "--threshold", "80")
    assert low.returncode == 1
    assert "coverage 54.5% is below the threshold of 80%" in low.stdout
    ok = gateway_cli("policy", "test", str(FIXTURE), "--run", "ops_may_read", "--threshold", "50")
    assert ok.returncode == 0, ok.stdout


def test_table_tests_count_for_coverage(tmp_path: Path) -> None:
    pol = _fixture(tmp_path)
    (pol / "policy_test.rego").unlink()
    (pol / "policy_test.yaml").write_text(
        "cases:\n"
        "  - name: delete is denied\n"
        "    input: {agent: {id: a, team: ops}, tool: delete}\n"
        "    reasons: [a may not delete]\n"
    )
    proc = gateway_cli("policy", "test", str(pol), "--coverage")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 0 failed" in proc.stdout
    assert f"deny at {pol}/policy.rego:15" not in proc.stdout  # the table case made it fire
    assert f"deny at {pol}/policy.rego:20: never fired" in proc.stdout


def test_json_output() -> None:
    proc = gateway_cli("policy", "test", str(FIXTURE), "--run", PASSING, "--coverage", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [t["outcome"] for t in doc["tests"]] == ["PASS", "PASS", "PASS"]
    cov = doc["coverage"]["files"][f"{FIXTURE}/policy.rego"]
    assert cov["not_covered"] == [24] and doc["coverage"]["deny_and_grant_rules"] == {"total": 3, "covered": 3}
    assert doc["passed"] is True


def test_the_shipped_policy_passes_its_rego_tests_and_covers_every_deny_and_grant_rule() -> None:
    proc = gateway_cli("policy", "test", "rego", "-q", "--coverage", "--threshold", "100")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed" in proc.stdout
    counts = [ln for ln in proc.stdout.splitlines() if ln.startswith(("PASS:", "FAIL:", "ERROR:"))]
    assert len(counts) == 1 and counts[0].startswith("PASS: ")
    n, m = counts[0].removeprefix("PASS: ").split("/")
    assert n == m and int(n) >= 40
    [total] = [ln for ln in proc.stdout.splitlines() if ln.startswith("total: ")]
    assert total.startswith("total: 100.0% ")
    rules = total.rpartition("deny and grant rules: ")[2]
    done, _, all_ = rules.removesuffix(" covered").partition("/")
    assert done == all_ and int(all_) >= 30


def test_the_shipped_rego_tests_alone_cover_every_deny_and_grant_rule() -> None:
    """Without the table tests (--run keeps only Rego tests), the helpers' and teams' tests still fire each rule."""
    proc = gateway_cli("policy", "test", "rego", "-q", "--coverage", "--run", r"^data\.")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "never fired" not in proc.stdout


def test_rego_test_modules_are_not_part_of_the_policy_nor_its_revision(tmp_path: Path) -> None:
    pol = _fixture(tmp_path)
    before = load_policy(pol)
    assert "policy_test.rego" not in before.modules and "policy_test.rego" in before.rego_tests
    (pol / "policy_test.rego").write_text("package gateway_test\nimport rego.v1\ntest_other if true\n")
    assert load_policy(pol).revision == before.revision


@pytest.mark.skipif(importlib.util.find_spec("opa_bindings") is None, reason="OPA's Go evaluator is not installed")
def test_the_shipped_rego_tests_give_the_same_results_on_opa() -> None:
    """Parity: each test rule of the shipped policy evaluated by OPA's own evaluator and by regorus."""
    from opa_bindings import OpaEngine

    source = load_policy(REPO / "rego")
    opa = OpaEngine()
    for name, text in {**source.modules, **source.rego_tests}.items():
        opa.add_policy(name, text)
    opa.add_data(source.data)
    engine = new_engine(source)
    tests = discover(parse_modules(engine), set(source.rego_tests))
    assert len(tests) >= 40
    differ = [t.path for t in tests if opa.eval_document(t.path.removeprefix("data."), {}) != engine.eval_rule(t.path)]
    assert not differ


def test_policy_lint_checks_the_rego_tests_too() -> None:
    ok = gateway_cli("policy", "lint", "rego")
    assert ok.returncode == 0 and "Rego test modules)" in ok.stdout, ok.stdout + ok.stderr
    bad = gateway_cli("policy", "lint", str(FIXTURE))
    assert bad.returncode == 2
    assert f"{FIXTURE}/policy_test.rego:24:33: `with data.gateway.double as ...` replaces a function" in bad.stderr


def test_a_coverage_just_below_a_threshold_never_shows_as_reaching_it() -> None:
    from gateway.policy.coverage import shown

    assert shown(99.97) == "99.9%" and shown(100.0) == "100.0%" and shown(54.54) == "54.5%"


@pytest.mark.anyio
async def test_a_reload_whose_rego_tests_fail_is_refused(tmp_path: Path) -> None:
    """The reload gate runs `policy test` on the candidate (gateway/policy/reload.py's preflight): the Rego tests
    gate a reload beside the table tests."""
    from gateway.config import PolicyConfig
    from gateway.metrics import Metrics
    from gateway.policy.embedded import EmbeddedEngine
    from gateway.policy.reload import PolicyWatcher

    policy = tmp_path / "policy"
    shutil.copytree(REPO / "rego", policy)
    engine = EmbeddedEngine(policy, "gateway/decision", 1000, threads=1)
    watcher = PolicyWatcher(engine, Metrics(), PolicyConfig(path=str(policy)))
    before = engine.revision
    (policy / "extra_test.rego").write_text(
        "package extra_test\nimport rego.v1\nimport data.gateway\n\n"
        'test_research_may_convert if {\n\tgateway.decision.allow with input as {"agent": {"id": "r", '
        '"team": "research", "roles": []}, "action": "tools/call", "server": "time", "tool": "convert_time"}\n}\n'
    )
    (policy / "extra.rego").write_text("package extra\n\nx := 1\n")  # a new revision
    try:
        result = await watcher.reload("test")
        assert result.result == "test_failure"
        assert "data.extra_test.test_research_may_convert: FAIL" in "\n".join(result.details)
        assert f"{policy}/extra_test.rego:5:1: test_research_may_convert is undefined" in "\n".join(result.details)
        assert engine.revision == before
    finally:
        await engine.aclose()


def test_a_rego_test_the_engine_cannot_evaluate_is_an_error_at_its_place(tmp_path: Path) -> None:
    pol = _fixture(tmp_path)
    (pol / "more_test.rego").write_text(
        "package more_test\nimport rego.v1\n\ntest_unknown if {\n\tnosuch.fn(1)\n}\n\n"
        "test_div if {\n\tx := 1 / 0\n\tx > 0\n}\n"
    )
    proc = gateway_cli("policy", "test", str(pol), "--run", "unknown|div")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{pol}/more_test.rego:5:14: could not find function nosuch.fn" in proc.stdout
    assert f"{pol}/more_test.rego:9:12: divide by zero" in proc.stdout
    assert "PASS: 0/2" in proc.stdout and "ERROR: 2/2" in proc.stdout
