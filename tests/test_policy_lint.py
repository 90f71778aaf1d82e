"""The embedded engine's Rego subset is checked when a policy is loaded, not at the first call that needs it:
rego-cpp compiles a call to a built-in it lacks and only fails when that call runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.policy import PolicyError
from gateway.policy.embedded import compile_policy, new_evaluator
from gateway.policy.lint import lint_source
from gateway.policy.loader import load_policy
from tests.conftest import REPO

HEADER = "package gateway\n\nimport rego.v1\n\n"


def _policy(tmp_path: Path, body: str, name: str = "gateway.rego") -> Path:
    root = tmp_path / "policy"
    root.mkdir(exist_ok=True)
    (root / name).write_text(HEADER + body)
    return root


def _errors(tmp_path: Path, body: str) -> list[str]:
    with pytest.raises(PolicyError) as err:
        compile_policy(_policy(tmp_path, body), "gateway/decision")
    return err.value.errors


def test_an_unsupported_builtin_compiles_in_rego_cpp_and_fails_only_when_called(tmp_path: Path) -> None:
    """Why the lint exists: without it this policy would load and then deny every matching call with an error."""
    from regopy import Interpreter

    body = 'decision := {"allow": true, "reasons": []} if net.cidr_contains("10.0.0.0/8", input.ip)\n'
    builder = Interpreter()
    builder.add_module("gateway.rego", HEADER + body)
    bundle = builder.build("x := data.gateway.decision", ["gateway/decision"])
    ev = new_evaluator()
    ev.set_input_term('{"ip": "10.1.2.3"}')
    assert not ev.query_bundle(bundle).ok()


def test_unsupported_builtin_is_refused_at_load_naming_file_and_line(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        'default decision := {"allow": false, "reasons": []}\n\n'
        'decision := {"allow": true, "reasons": []} if {\n'
        '\tnet.cidr_contains("10.0.0.0/8", input.ip)\n'
        "}\n",
    )
    assert len(errors) == 1
    assert errors[0].startswith(f"{tmp_path / 'policy' / 'gateway.rego'}:8:2: net.cidr_contains is not a built-in")
    assert "docs/policy.md" in errors[0]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('x := http.send({"method": "get", "url": "https://example.com"})', "http.send is not a built-in"),
        ("x := json.match_schema(input, {})", "json.match_schema is not a built-in"),
        ("x := trace(\"here\")", "trace is not a built-in the embedded engine supports"),
        ("x := io.jwt(input.t)", "io.jwt is not a built-in (of OPA or of the embedded engine)"),
        ("x := crypto.x(input.t)", "crypto.x is not a built-in (of OPA or of the embedded engine)"),
        ("x := no_such_helper(1)", "no_such_helper is neither a function of package gateway"),
        ('x := regex.match("(?i)^ls", input.c)', "inline flags such as (?i)"),
        ('x := regex.match(`(?P<prog>\\w+)`, input.c)', "named groups"),
        ('x := regex.match("^\\\\pL+$", input.c)', "Unicode classes"),
        ('x := regex.match("\\\\Als\\\\z", input.c)', "\\A and \\z anchors"),
        ('x := sprintf("%q", [input.c])', "%q is not supported"),
        ('x := time.parse_rfc3339_ns("2026-01-01T00:00:00Z")', "rejects a trailing Z"),
        ("f(p) := {x | some x in data.d[p]}", "function argument p used as a key inside a comprehension"),
        ('x := true if startswith(input.s, "a") with input as {"s": "abc"}', "'with' is not supported"),
        ('x := $"from {net.cidr_contains("10.0.0.0/8", input.ip)}"', "net.cidr_contains is not a built-in"),
    ],
)
def test_each_unsupported_construct_is_named(tmp_path: Path, line: str, fragment: str) -> None:
    errors = _errors(tmp_path, 'decision := {"allow": false, "reasons": []}\n\n' + line + "\n")
    assert len(errors) == 1, errors
    assert ":7:" in errors[0] and fragment in errors[0], errors


def test_what_is_not_a_call_is_left_alone(tmp_path: Path) -> None:
    """Comments, strings, user functions, imported packages, print() and set() are fine."""
    root = _policy(
        tmp_path,
        "import data.gateway.helpers\n\n"
        "# net.cidr_contains(x) in a comment\n"
        'msg := "http.send(x) inside a string"\n'
        "raw := `trace(x) in a raw string`\n"
        'template := $"http.send(x) as text, then {upper("code")}, \\{trace(x)} as text"\n'
        "double(x) := x * 2\n\n"
        "empty := set()\n\n"
        'decision := {"allow": true, "reasons": [msg]} if {\n'
        "\tdouble(2) == 4\n"
        "\thelpers.ok(1)\n"
        '\tprint("evaluated")\n'
        "\tq := input.p\n"
        '\tcount({x | some x in data.d[q]}) >= 0\n'
        "}\n",
    )
    (root / "helpers.rego").write_text("package gateway.helpers\n\nimport rego.v1\n\nok(x) if x > 0\n")
    assert lint_source(load_policy(root)) == []


def test_the_shipped_policies_are_inside_the_subset() -> None:
    assert lint_source(load_policy(REPO / "rego")) == []


def test_check_config_reports_the_lint_error(tmp_path: Path) -> None:
    body = 'decision := {"allow": true, "reasons": []} if net.cidr_contains("10.0.0.0/8", input.ip)\n'
    root = _policy(tmp_path, body)
    config = tmp_path / "gateway.toml"
    config.write_text(f'[policy]\npath = "{root}"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(config)], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert f"{root / 'gateway.rego'}:5:" in proc.stderr and "net.cidr_contains" in proc.stderr


def test_a_policy_rego_cpp_cannot_build_is_refused_not_crashed_on(tmp_path: Path) -> None:
    """rego-cpp returns a broken bundle for some errors instead of raising; evaluating it would crash the process."""
    root = _policy(tmp_path, 'p contains 1 if true\n\np := 2\n\ndecision := {"allow": true, "reasons": []}\n')
    proc = subprocess.run([sys.executable, "-m", "gateway", "policy", "test", str(root)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert f"{root}: Invalid rule body for set rule" in proc.stderr


def test_functions_of_different_arities_are_refused_before_they_abort_rego_cpp(tmp_path: Path) -> None:
    errors = _errors(tmp_path, 'f(a) := 1 if a\n\nf(a, b) := 2 if a\n\ndecision := {"allow": f(1) == 1}\n')
    assert errors == [f"{tmp_path / 'policy' / 'gateway.rego'}:7:1: function f is defined with 2 and with 1 arguments: "
                      "every definition of a function must take the same number (the embedded engine aborts on this)"]


def test_default_on_a_partial_set_is_named(tmp_path: Path) -> None:
    errors = _errors(tmp_path, 'deny contains "x" if input.x\n\ndefault deny := set()\n\ndecision := {"allow": true}\n')
    assert errors == [f"{tmp_path / 'policy' / 'gateway.rego'}:7:1: default deny: deny is a partial set (contains), "
                      "which is always defined (empty when no rule adds to it); a default is an error"]


def test_call_names_that_abort_rego_cpp_never_reach_it(tmp_path: Path) -> None:
    """rego-cpp aborts the process when it compiles (or is asked about) a call like io.jwt(x): the lint runs first."""
    errors = _errors(tmp_path, 'decision := {"allow": io.jwt(input.t), "reasons": []}\n')
    assert len(errors) == 1 and "io.jwt is not a built-in" in errors[0]


def test_a_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    errors = _errors(tmp_path, 'decision := {"allow": true, "reasons": [] if {\n')
    assert errors and all(str(tmp_path / "policy" / "gateway.rego") in e for e in errors), errors
