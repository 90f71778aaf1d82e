"""`policy eval --explain` and `audit explain`: the rules behind a decision, with file:line and the input they read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anyio
import orjson
from mcp.shared.exceptions import MCPError

from gateway.policy.loader import load_policy
from tests.conftest import (
    ECHO,
    KEYS,
    REPO,
    default_config,
    free_port,
    gateway_cli,
    mcp_client,
    start_gateway,
    stdio_upstream,
)

FIXTURE = REPO / "tests" / "fixtures" / "regotest"
CONFIG = REPO / "gateway.toml"
PLATFORM = REPO / "rego" / "teams" / "platform.rego"


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_eval_explain_names_the_rule_its_place_and_the_input_it_read(tmp_path: Path) -> None:
    inp = tmp_path / "input.json"
    inp.write_text(json.dumps({"agent": {"id": "bob", "team": "ops"}, "tool": "delete", "arguments": {"size": 50}}))
    proc = gateway_cli(
        "policy", "eval", "--config", str(CONFIG), "--policy", str(FIXTURE), "--input", str(inp), "--explain"
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert '  reason "bob may not delete"' in out
    assert f"    produced by deny at {FIXTURE}/policy.rego:15 (package gateway)" in out
    assert '      it read: input.agent.id = "bob", input.tool = "delete"' in out
    assert '  reason "too big"' in out and f"produced by deny at {FIXTURE}/policy.rego:20" in out
    assert "input.arguments.size = 50" in out


def test_eval_explain_names_the_grant_that_allowed_the_call() -> None:
    proc = gateway_cli(
        "policy", "eval", "--config", str(CONFIG), "--agent", "ci-bot", "--tool", "time__get_current_time",
        "--args", '{"timezone": "UTC"}', "--annotations", "{}", "--explain",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    grant = _line_of(PLATFORM, 'input.action in {"tools/list", "tools/call"}') - 1
    assert f"  allowed by grants at {PLATFORM}:{grant} (package gateway.teams.platform)" in proc.stdout
    assert 'input.agent.roles = ["ci"]' in proc.stdout and 'input.tool = "get_current_time"' in proc.stdout
    assert "research" not in proc.stdout  # another team's rules did not decide this call


def test_eval_explain_shows_where_each_grant_stopped_when_nothing_allows() -> None:
    proc = gateway_cli(
        "policy", "eval", "--config", str(CONFIG), "--agent", "ci-bot", "--tool", "git__git_commit",
        "--args", '{"repo_path": "/tmp/r"}', "--annotations", "{}", "--json", "--explain",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    ex = orjson.loads(proc.stdout)["explanation"]
    [reason] = ex["reasons"]
    assert reason["reason"] == "no rule allows this request" and reason["literal_at"].endswith("(decide)")
    stopped = {g["stopped_at"]["text"] for g in ex["grants_not_held"]}
    assert "lib.tool_granted(team.roles)" in stopped
    assert all(g["rule"].startswith("data.gateway.teams.platform.") for g in ex["grants_not_held"])


def test_eval_explain_on_a_policy_that_decides_otherwise_says_so(tmp_path: Path) -> None:
    """--policy decides and explains the same files; the configured engine with other files is flagged."""
    other = tmp_path / "rego"
    shutil.copytree(REPO / "rego", other)
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.read_text().replace('path = "rego"', f'path = "{other}"'))
    data = json.loads((other / "data.json").read_text())
    data["teams"]["platform"]["timezones"].remove("Asia/Tokyo")
    (other / "data.json").write_text(json.dumps(data))
    proc = gateway_cli(
        "policy", "eval", "--config", str(config), "--agent", "ci-bot", "--tool", "time__convert_time",
        "--args", '{"source_timezone": "Asia/Tokyo"}', "--annotations", "{}", "--explain",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = _line_of(other / "teams" / "platform.rego", "tz := args.source_timezone") - 3
    assert f"produced by deny at {other}/teams/platform.rego:{line}" in proc.stdout
    assert 'input.arguments.source_timezone = "Asia/Tokyo"' in proc.stdout


def _serve_and_call(tmp_path: Path, policy: Path, record_arguments: bool) -> list[dict]:
    port = free_port()
    upstreams = stdio_upstream("time", ["mcp-server-time", "--local-timezone", "UTC"]) + stdio_upstream("echo", ECHO)
    extra = f"[audit]\nrecord_arguments = {str(record_arguments).lower()}\n"
    config = default_config(port, tmp_path, upstreams, policy=policy).replace("[audit]\n", extra, 1)
    gw = start_gateway(tmp_path, config, port)

    async def calls() -> None:
        async with mcp_client(gw.url, KEYS["ci-bot"][2]) as c:
            args = {"source_timezone": "Mars/Olympus", "time": "12:00", "target_timezone": "UTC"}
            try:
                result = await c.call_tool("time__convert_time", args)
                assert result.is_error
            except MCPError:
                pass
            assert not (await c.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error

    try:
        anyio.run(calls)
    finally:
        gw.stop()
    return [orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]


def _decision(records: list[dict], tool: str) -> str:
    return next(r["decision_id"] for r in records if r.get("type") == "decision" and r.get("tool") == tool)


def test_audit_explain_a_recorded_decision_of_a_real_call(tmp_path: Path) -> None:
    policy = tmp_path / "rego"
    shutil.copytree(REPO / "rego", policy)
    records = _serve_and_call(tmp_path, policy, record_arguments=True)
    config = tmp_path / "gateway.toml"
    denied, allowed = _decision(records, "convert_time"), _decision(records, "get_current_time")
    revision = load_policy(policy).revision
    deny_line = _line_of(policy / "teams" / "platform.rego", "tz := args.source_timezone") - 3

    proc = gateway_cli("audit", "explain", denied, "--config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert f"decision:    {denied} ({tmp_path}/audit.jsonl:" in out
    assert "ci-bot tools/call time__convert_time" in out
    assert "decided:     deny: timezone Mars/Olympus is not in the team's list" in out
    assert f"revision:    {revision} (the policy is {revision} now, the same)" in out
    assert f"produced by deny at {policy}/teams/platform.rego:{deny_line}" in out
    assert 'input.arguments.source_timezone = "Mars/Olympus"' in out
    assert "note:" not in out

    grant = gateway_cli("audit", "explain", allowed, "--config", str(config))
    assert grant.returncode == 0 and f"allowed by grants at {policy}/teams/platform.rego:" in grant.stdout

    # The policy changes after the decision: the explanation says the revision differs, and what decides now.
    data = json.loads((policy / "data.json").read_text())
    data["teams"]["platform"]["timezones"].append("Mars/Olympus")
    (policy / "data.json").write_text(json.dumps(data))
    later = gateway_cli("audit", "explain", denied, "--config", str(config))
    assert later.returncode == 0, later.stderr
    assert f"note: the decision was made by policy revision {revision}; {policy} is revision" in later.stdout
    assert "note: the policy's files decide this input otherwise (allows: )" in later.stdout

    missing = gateway_cli("audit", "explain", "no-such-decision", "--config", str(config))
    assert missing.returncode == 2 and "decision no-such-decision is not in" in missing.stderr


def test_audit_explain_with_arguments_recorded_as_a_digest(tmp_path: Path) -> None:
    records = _serve_and_call(tmp_path, REPO / "rego", record_arguments=False)
    denied = _decision(records, "convert_time")
    proc = gateway_cli("audit", "explain", denied, "--config", str(tmp_path / "gateway.toml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "the arguments were recorded as a digest only" in out
    assert f"matches the message of deny at {PLATFORM}:" in out
    assert "input.arguments.source_timezone (not recorded)" in out
    assert "research" not in out


def test_eval_explain_names_the_rule_that_contained_the_call() -> None:
    proc = gateway_cli(
        "policy", "eval", "--config", str(CONFIG), "--agent", "ci-bot", "--tool", "files__read_file",
        "--args", '{"path": "a.txt"}', "--annotations", "{}", "--explain",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = _line_of(PLATFORM, "containment := ")
    want = f'  contained {{"network":"none","read_only":true}} by containment at {PLATFORM}:{line}'
    assert want in proc.stdout, proc.stdout


def test_eval_explain_of_a_rule_on_trial(tmp_path: Path) -> None:
    policy = tmp_path / "rego"
    shutil.copytree(REPO / "rego", policy)
    research = policy / "teams" / "research.rego"
    research.write_text(
        research.read_text()
        + '\nmonitor_deny contains msg if {\n\tlib.is_call\n\tinput.server == "time"\n\ttz := args.timezone\n'
        + '\ttz != "UTC"\n\tmsg := sprintf("research reads the time in UTC only (timezone %v)", [tz])\n}\n'
    )
    proc = gateway_cli(
        "policy", "eval", "--config", str(CONFIG), "--policy", str(policy), "--agent", "researcher", "--team",
        "research", "--tool", "time__get_current_time", "--args", '{"timezone": "Asia/Tokyo"}', "--annotations",
        "{}", "--explain",
    )  # fmt: skip
    out = proc.stdout
    assert f"produced by monitor_deny at {research}:" in out, out + proc.stderr
    assert 'input.arguments.timezone = "Asia/Tokyo"' in out
    assert "  mode monitor: only rules on trial deny it" in out


def test_eval_explain_names_the_data_a_rule_compared_the_input_with() -> None:
    proc = gateway_cli(
        "policy", "eval", "--config", str(CONFIG), "--agent", "ci-bot", "--tool", "time__convert_time",
        "--args", '{"source_timezone": "Mars/Olympus"}', "--annotations", "{}", "--explain",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert '      against: data.teams.platform.timezones = ["UTC",' in proc.stdout, proc.stdout
