"""The embedded engine's Rego subset is checked when a policy is loaded, not at the first call that needs it:
rego-cpp compiles a call to a built-in it lacks and only fails when that call runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.policy import PolicyError
from gateway.policy.embedded import compile_policy, new_evaluator
from gateway.policy.lint import lint_source
from gateway.policy.loader import load_policy
from tests.conftest import REPO, gateway_cli

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
        ('x := trace("here")', "trace is not a built-in the embedded engine supports"),
        ("x := io.jwt(input.t)", "io.jwt is not a built-in (of OPA or of the embedded engine)"),
        ("x := crypto.x(input.t)", "crypto.x is not a built-in (of OPA or of the embedded engine)"),
        ("x := no_such_helper(1)", "no_such_helper is neither a function of package gateway"),
        ('x := regex.match("(?i)^ls", input.c)', "inline flags such as (?i)"),
        ("x := regex.match(`(?P<prog>\\w+)`, input.c)", "named groups"),
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
        "\tcount({x | some x in data.d[q]}) >= 0\n"
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
    proc = gateway_cli("check-config", str(config))
    assert proc.returncode == 2
    assert f"{root / 'gateway.rego'}:5:" in proc.stderr and "net.cidr_contains" in proc.stderr


def test_a_policy_rego_cpp_cannot_build_is_refused_not_crashed_on(tmp_path: Path) -> None:
    """rego-cpp returns a broken bundle for some errors instead of raising; evaluating it would crash the process."""
    root = _policy(tmp_path, 'p contains 1 if true\n\np := 2\n\ndecision := {"allow": true, "reasons": []}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "policy", "test", str(root), "--engine", "regopy"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert f"{root}: Invalid rule body for set rule" in proc.stderr


def test_functions_of_different_arities_are_refused_before_they_abort_rego_cpp(tmp_path: Path) -> None:
    errors = _errors(tmp_path, 'f(a) := 1 if a\n\nf(a, b) := 2 if a\n\ndecision := {"allow": f(1) == 1}\n')
    assert errors == [
        f"{tmp_path / 'policy' / 'gateway.rego'}:7:1: function f is defined with 2 and with 1 arguments: "
        "every definition of a function must take the same number (the embedded engine aborts on this)"
    ]


def test_default_on_a_partial_set_is_named(tmp_path: Path) -> None:
    errors = _errors(tmp_path, 'deny contains "x" if input.x\n\ndefault deny := set()\n\ndecision := {"allow": true}\n')
    assert errors == [
        f"{tmp_path / 'policy' / 'gateway.rego'}:7:1: default deny: deny is a partial set (contains), "
        "which is always defined (empty when no rule adds to it); a default is an error"
    ]


def test_call_names_that_abort_rego_cpp_never_reach_it(tmp_path: Path) -> None:
    """rego-cpp aborts the process when it compiles (or is asked about) a call like io.jwt(x): the lint runs first."""
    errors = _errors(tmp_path, 'decision := {"allow": io.jwt(input.t), "reasons": []}\n')
    assert len(errors) == 1 and "io.jwt is not a built-in" in errors[0]


def test_a_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    errors = _errors(tmp_path, 'decision := {"allow": true, "reasons": [] if {\n')
    assert errors and all(str(tmp_path / "policy" / "gateway.rego") in e for e in errors), errors


# --- names nothing defines (issue 11, findings 3 and 4): refused at load with file:line:col, as OPA does ---------

LIB = 'package gateway.lib\n\nimport rego.v1\n\nin_workspace(path) if not startswith(path, "/")\n\nis_call if true\n'


def _with_lib(tmp_path: Path, body: str) -> list[str]:
    root = _policy(tmp_path, "import data.gateway.lib\nimport data.gateway.lib as l\n\n" + body)
    (root / "lib.rego").write_text(LIB)
    return lint_source(load_policy(root))


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (
            "p if lib.in_workspcae(input.path)",
            "8:6: lib.in_workspcae is not defined: package gateway.lib has no function in_workspcae",
        ),
        ("p if l.in_workspcae(input.path)", "8:6: l.in_workspcae is not defined"),
        ("p if data.gateway.lib.in_workspcae(input.path)", "8:6: data.gateway.lib.in_workspcae is not defined"),
        ("p if data.gateway.nolib.f(input.path)", "8:6: data.gateway.nolib.f: no package of this policy defines"),
        ("p if lib.is_cal", "8:6: lib.is_cal is not defined: package gateway.lib has no rule is_cal"),
        ("p if data.gateway.lib.is_cal", "8:6: data.gateway.lib.is_cal is not defined"),
        (
            "p if lib.in_workspace(input.a, input.b, input.c)",
            "8:6: lib.in_workspace takes 1 argument (function of package gateway.lib), called with 3",
        ),
        ("p if strings.nope(input.a)", "8:6: strings.nope is not a built-in"),
        (
            "p := lib.f2(deny) if true",
            "8:13: deny is undefined: not a rule of package gateway, an import, a built-in, "
            "nor a variable this rule binds",
        ),
    ],
)
def test_a_name_nothing_defines_is_refused_naming_it(tmp_path: Path, line: str, fragment: str) -> None:
    errors = _with_lib(tmp_path, line + '\n\ndecision := {"allow": true, "reasons": []}\n')
    assert any(fragment in e for e in errors), errors
    assert all(
        e.startswith(str(tmp_path / "policy" / "gateway.rego") + ":8:") for e in errors if "gateway.rego" in e
    ), errors


def test_the_adding_a_team_mistake_names_the_undefined_rules(tmp_path: Path) -> None:
    """The recipe as it once read: `decision := lib.decide(deny, grants, containment)` in a team that defines only
    grants. check-config said ok and every decision failed with a generic evaluation error."""
    root = tmp_path / "rego"
    shutil.copytree(REPO / "rego", root)
    (root / "teams" / "qa.rego").write_text(
        "package gateway.teams.qa\n\nimport data.gateway.lib\nimport rego.v1\n\ndefault grants := false\n\n"
        "grants if lib.is_call\n\ndecision := lib.decide(deny, grants, containment)\n"
    )
    config = tmp_path / "gateway.toml"
    config.write_text(f'[policy]\npath = "{root}"\n')
    proc = gateway_cli("check-config", str(config))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    qa = root / "teams" / "qa.rego"
    assert f"{qa}:10:24: deny is undefined" in proc.stderr
    assert f"{qa}:10:38: containment is undefined" in proc.stderr


def test_a_typo_through_an_import_is_refused_by_check_config_and_serve(tmp_path: Path) -> None:
    root = tmp_path / "rego"
    shutil.copytree(REPO / "rego", root)
    platform = root / "teams" / "platform.rego"
    platform.write_text(platform.read_text().replace("not lib.in_workspace(cwd)", "not lib.in_workspcae(cwd)"))
    line = next(i for i, t in enumerate(platform.read_text().splitlines(), 1) if "in_workspcae" in t)
    config = tmp_path / "gateway.toml"
    config.write_text(f'[policy]\npath = "{root}"\n')
    for argv in (["check-config", str(config)], ["serve", "--config", str(config)]):
        proc = gateway_cli(*argv)
        assert proc.returncode != 0, argv
        assert f"{platform}:{line}:6: lib.in_workspcae is not defined" in proc.stderr, proc.stderr


def test_what_binds_a_name_is_not_mistaken_for_an_undefined_one(tmp_path: Path) -> None:
    body = (
        "import input.agent\n\n"
        'f(x, {"k": y}) := x + y\n\n'
        'deny contains v if {\n\twalk(input.arguments, [_, v])\n\tv == "FORBIDDEN"\n}\n\n'
        'q if {\n\t[a, b] := split(input.s, "/")\n\ta == b\n}\n\n'
        "r if {\n\tsome k, v in input.m\n\tevery w in v { w > k }\n}\n\n"
        's if {\n\tinput.m[k] == 1\n\tk != ""\n}\n\n'
        "t if {\n\tz = input.x\n\tinput.y = u\n\tz == u\n}\n\n"
        "o if lib.in_workspace(input.p, out)\n\n"
        "keys := {k | some k, _ in input.m}\n\n"
        "teams_known if data.gateway.lib\n\n"
        "who := agent.id\n\n"
        "d if data.teams.platform.roles.ci\n\n"
        'decision := {"allow": f(1, {"k": 2}) == 3, "reasons": [x | some x in deny]}\n'
    )
    assert _with_lib(tmp_path, body) == []


def test_a_missing_brace_is_reported_where_it_is_missing(tmp_path: Path) -> None:
    """rego-cpp reported the rule below it, or unknown functions many lines away."""
    root = tmp_path / "rego"
    shutil.copytree(REPO / "rego", root)
    platform = root / "teams" / "platform.rego"
    text = platform.read_text()
    at = text.index('msg := sprintf("repo_path %v is outside %v"')
    close = text.index("}\n", at)
    platform.write_text(text[:close] + text[close + 2 :])
    opener = text[:at].rindex("{")
    line, col = text.count("\n", 0, opener) + 1, opener - text.rindex("\n", 0, opener)
    with pytest.raises(PolicyError) as err:
        compile_policy(root, "gateway/decision")
    assert len(err.value.errors) == 1, err.value.errors
    assert err.value.errors[0].startswith(
        f"{platform}:{line}:{col}: this {{ is not closed (a }} is missing before "
        f"the rule that starts on line {text.count(chr(10), 0, close) + 2}"
    )


def test_a_double_ampersand_is_one_error_at_its_column(tmp_path: Path) -> None:
    """rego-cpp gave two 'Invalid set operator' errors at adjacent columns."""
    errors = _errors(tmp_path, 'decision := {"allow": true, "reasons": []} if {\n\tinput.a == 1 && input.b == 2\n}\n')
    assert errors == [
        f"{tmp_path / 'policy' / 'gateway.rego'}:6:15: Rego has no && operator: write each condition "
        "on its own line of the body (or separate them with ;)"
    ]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('p if startswith("a")', "8:6: startswith takes 2 arguments, called with 1"),
        ("p := count()", "8:6: count takes 1 argument, called with 0"),  # rego-cpp crashes evaluating this
        ('p := sprintf("x")', "8:6: sprintf takes 2 arguments, called with 1"),
        ('p := object.get(input, "a")', "8:6: object.get takes 3 arguments, called with 2"),
    ],
)
def test_a_built_in_called_with_the_wrong_number_of_arguments_is_refused(
    tmp_path: Path, line: str, fragment: str
) -> None:
    errors = _with_lib(tmp_path, line + "\n")
    assert any(fragment in e for e in errors), errors


def test_a_built_in_may_take_its_output_argument(tmp_path: Path) -> None:
    assert _with_lib(tmp_path, "p if {\n\tcount(input.xs, n)\n\tn > 1\n}\n\nq := time.now_ns()\n") == []


def test_policy_lint_names_every_problem_or_says_ok(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "gateway", "policy", "lint", str(REPO / "rego")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0 and ok.stdout.startswith(f"{REPO / 'rego'}: ok (revision "), ok.stderr
    root = _policy(tmp_path, "import data.gateway.lib\n\np if lib.nope(input.x)\n")
    (root / "lib.rego").write_text(LIB)
    bad = subprocess.run(
        [sys.executable, "-m", "gateway", "policy", "lint", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert f"{root / 'gateway.rego'}:7:6: lib.nope is not defined" in bad.stderr
