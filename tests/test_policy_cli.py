"""The policy author's commands, run as a user runs them: `mcp-gateway policy test`, `policy eval`, `audit replay`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from mcp.shared.exceptions import MCPError

from gateway.policy.loader import load_policy
from tests.conftest import (
    ECHO,
    KEYS,
    REPO,
    default_config,
    free_port,
    mcp_client,
    start_gateway,
    stdio_upstream,
)
from tests.test_policy_opa import start_standin

CONFIG = REPO / "gateway.toml"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "rego"
    shutil.copytree(REPO / "rego", dst)
    return dst


# --- policy test ----------------------------------------------------------------------------------------------


def test_policy_test_passes_the_shipped_policies() -> None:
    proc = cli("policy", "test", "rego")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tables, rego = proc.stdout.split("\n\n")
    lines = tables.splitlines()
    assert all(line.startswith("PASS rego/") for line in lines[:-1])
    assert len(lines) - 1 >= 60 and lines[-1] == f"{len(lines) - 1} passed, 0 failed"
    assert rego.startswith("PASS: ") and "FAIL" not in rego  # the Rego tests (*_test.rego), as opa test prints them


def test_policy_test_shows_a_diff_and_fails(tmp_path: Path) -> None:
    policy = _copy(tmp_path)
    platform = policy / "teams" / "platform.rego"
    platform.write_text(
        platform.read_text()
        .replace('"UTC", ', "")
        .replace("destructive tools need the admin role", "destructive tools need an admin")
    )
    proc = cli("policy", "test", str(policy), "-q")
    assert proc.returncode == 1
    out, _, rego = proc.stdout.partition("\n\n")
    assert (
        "data.gateway_test.teams.platform.test_destructive_tools_need_admin_unless_argument_checked: FAIL" in rego
    )  # the Rego tests catch it too
    assert "PASS" not in out
    assert f"FAIL {policy}/teams/platform_test.yaml: destructive tools need the admin role: reasons differ" in out
    assert '-    "destructive tools need the admin role"' in out and '+    "destructive tools need an admin"' in out
    assert out.rstrip().endswith("failed") and ", 0 failed" not in out


def test_policy_test_reports_a_policy_that_does_not_load(tmp_path: Path) -> None:
    policy = _copy(tmp_path)
    (policy / "teams" / "platform.rego").write_text(
        (policy / "teams" / "platform.rego").read_text() + '\nx := http.send({"url": "https://x"})\n'
    )
    proc = cli("policy", "test", str(policy))
    assert proc.returncode == 2
    assert f"{policy}/teams/platform.rego:" in proc.stderr and "http.send is not a built-in" in proc.stderr


@pytest.mark.parametrize("decision", ["not.a.path", "gateway/decision with input as {}", "/gateway"])
def test_policy_test_refuses_a_decision_that_is_not_a_rule_path(decision: str) -> None:
    proc = cli("policy", "test", "rego", "--decision", decision)
    assert proc.returncode == 2 and "a rule path such as gateway/decision is expected" in proc.stderr, proc.stderr


def test_policy_test_with_no_tables_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text('package gateway\n\nimport rego.v1\n\ndecision := {"allow": false}\n')
    proc = cli("policy", "test", str(tmp_path))
    assert proc.returncode == 2 and "no table tests found" in proc.stderr


def test_policy_test_against_an_opa_server() -> None:
    standin = start_standin()
    try:
        proc = cli("policy", "test", "rego", "--opa-url", standin.url, "-q")
    finally:
        standin.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tables, _, rego = proc.stdout.partition("\n\n")
    assert tables.strip().endswith("passed, 0 failed") and rego.startswith("PASS: ")  # Rego tests run locally


# --- policy eval ----------------------------------------------------------------------------------------------


def test_policy_eval_prints_decision_reasons_and_time() -> None:
    proc = cli(
        "policy",
        "eval",
        "--config",
        str(CONFIG),
        "--agent",
        "ci-bot",
        "--tool",
        "time__convert_time",
        "--args",
        '{"source_timezone": "Mars/Olympus", "time": "10:00", "target_timezone": "UTC"}',
    )
    assert proc.returncode == 1, proc.stderr
    assert "decision:    deny" in proc.stdout
    assert "  - timezone Mars/Olympus is not in the team's list" in proc.stdout
    assert f"revision:    {load_policy(REPO / 'rego').revision} (embedded" in proc.stdout
    assert "time:        " in proc.stdout and " ms (median of 20" in proc.stdout


def test_policy_eval_allowed_call_shows_the_containment() -> None:
    proc = cli(
        "policy",
        "eval",
        "--agent",
        "research-agent",
        "--tool",
        "files__read_file",
        "--args",
        '{"path": "papers/a.pdf"}',
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["allow"] is True and doc["result"]["containment"] == {"read_only": True, "network": "none"}
    assert doc["input"]["agent"]["team"] == "research" and doc["input"]["server"] == "files"
    assert doc["decision_ms"] > 0


def test_policy_eval_from_an_input_file(tmp_path: Path) -> None:
    inp = tmp_path / "input.yaml"
    inp.write_text(
        "agent: {id: x, team: platform, roles: [ci]}\nserver: sh\ntool: run\narguments: {command: rm -rf /}\n"
    )
    proc = cli("policy", "eval", "--input", str(inp))
    assert proc.returncode == 1
    assert "command rm is not in the allow-list of your roles" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agent", "nobody", "--tool", "time__get_current_time"], "has no [[identity.api_keys]] entry"),
        (["--agent", "ci-bot", "--tool", "get_current_time"], "name it SERVER__TOOL"),
        (["--agent", "ci-bot", "--tool", "time__x", "--args", "{not json"], "--args: neither JSON nor YAML"),
        (["--agent", "ci-bot", "--tool", "time__x", "--args", "[1]"], "must be JSON objects"),
        (["--agent", "ci-bot"], "give --agent and --tool"),
    ],
)
def test_policy_eval_explains_bad_input(args: list[str], message: str) -> None:
    proc = cli("policy", "eval", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_policy_eval_input_file_that_is_not_text(tmp_path: Path) -> None:
    inp = tmp_path / "input.yaml"
    inp.write_bytes(b"\xff\xfe agent: x")
    proc = cli("policy", "eval", "--input", str(inp))
    assert proc.returncode == 2 and f"{inp}: cannot be read" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# --- audit replay ---------------------------------------------------------------------------------------------


def test_audit_replay_reads_records_not_shaped_as_the_gateway_writes_them(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    inp = {"agent": {"id": "x", "team": "nobody"}, "action": "tools/call"}
    audit.write_bytes(
        b"\n".join(
            orjson.dumps(r)
            for r in [
                {
                    "type": "decision",
                    "input": inp,
                    "result": {},
                    "allow": True,
                    "reasons": 5,
                    "bundles": "x",
                    "masked": 3,
                },
                {
                    "type": "decision",
                    "input": inp,
                    "result": [1],
                    "allow": "yes",
                    "reasons": [1],
                    "bundles": {"gateway": 2},
                },
            ]
        )
        + b"\nnot json\n"
    )
    proc = cli("audit", "replay", str(audit), "--as-given", "--config", str(CONFIG))
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1 and proc.stdout.count("DIFFERS  ") == 2, proc.stdout
    assert "(revision ? -> " in proc.stdout and "1 unreadable lines" in proc.stdout


def _run_calls(tmp_path: Path, record_arguments: bool, port: int) -> None:
    import anyio

    upstreams = stdio_upstream("time", ["mcp-server-time", "--local-timezone", "UTC"]) + stdio_upstream("echo", ECHO)
    extra = f"[audit]\nrecord_arguments = {str(record_arguments).lower()}\n"
    config = default_config(port, tmp_path, upstreams).replace("[audit]\n", extra, 1)
    gw = start_gateway(tmp_path, config, port)

    async def calls() -> None:
        async with mcp_client(gw.url, KEYS["ci-bot"][2]) as c:
            args = {"source_timezone": "Europe/Paris", "time": "12:00", "target_timezone": "UTC"}
            assert not (await c.call_tool("time__convert_time", args)).is_error
            assert not (await c.call_tool("echo__echo", {"text": "hi"})).is_error
            with pytest.raises(MCPError):  # decided without policy: recorded, skipped by replay
                await c.call_tool("echo__no_such_tool", {})

    try:
        anyio.run(calls)
    finally:
        gw.stop()


def test_audit_replay_lists_what_a_policy_change_would_decide_differently(tmp_path: Path) -> None:
    port = free_port()
    _run_calls(tmp_path, record_arguments=True, port=port)
    _run_calls(tmp_path, record_arguments=False, port=port)
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "gateway.toml"
    records = [orjson.loads(line) for line in audit.read_bytes().splitlines()]
    assert sum(1 for r in records if r.get("masked")) >= 2  # the second run's calls have redacted arguments

    same = cli("audit", "replay", str(audit), "--config", str(config))
    assert same.returncode == 0, same.stdout + same.stderr
    assert "0 decided differently now" in same.stdout

    candidate = _copy(tmp_path)
    data = json.loads((candidate / "data.json").read_text())
    data["teams"]["platform"]["timezones"].remove("Europe/Paris")
    (candidate / "data.json").write_text(json.dumps(data))
    proc = cli("audit", "replay", str(audit), "--config", str(config), "--policy", str(candidate))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    differs = [line for line in out.splitlines() if line.startswith("DIFFERS")]
    assert len(differs) == 1 and "ci-bot tools/call time__convert_time" in differs[0]
    assert "    was: allow" in out and "    now: deny: timezone Europe/Paris is not in the team's list" in out
    redacted = [line for line in out.splitlines() if line.startswith("REDACTED")]
    assert any("time__convert_time" in line and "arguments not recorded" in line for line in redacted)
    summary = out.strip().splitlines()[-1]
    assert "1 decided differently now" in summary
    assert f"{len(redacted)} not replayed faithfully (arguments redacted" in summary
    assert "skipped (decided without policy" in summary
