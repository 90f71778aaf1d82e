"""Monitor mode through the real gateway and the real SDK client: a denial a [[policy.monitor]] entry or the
policy's ``mode: "monitor"`` covers is let through, recorded as ``would_deny`` and counted; the call keeps its
sandbox; what the gateway refuses for its own safety (and identity) stays refused even when everything is
monitored."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import (
    ECHO,
    KEYS,
    RunningGateway,
    default_config,
    free_port,
    mcp_client,
    start_gateway,
    stdio_upstream,
)

pytestmark = pytest.mark.anyio

CI, ADMIN, RESEARCHER = KEYS["ci-bot"][2], KEYS["admin"][2], KEYS["researcher"][2]
UID_BASE = 336000

# The test's own policy: lists allowed (but echo's pid tool hidden); research may call nothing; platform's echo
# texts starting "trial" are denied by a rule on trial (mode monitor), "refuse" by an enforced rule; "boom" makes
# the decision malformed (an engine failure); the shell is for admins only.
POLICY = """package gateway

import rego.v1

listing if input.action in {"tools/list", "prompts/list", "resources/list"}

text := input.arguments.text if is_string(input.arguments.text)

default decision := {"allow": false, "reasons": ["no rule allows this request"]}

decision := {"allow": false, "reasons": ["pid is hidden"]} if {
	input.tool == "pid"
} else := {"allow": true, "reasons": []} if {
	listing
} else := "not a decision" if {
	text == "boom"
} else := {"allow": false, "reasons": ["a secret in the arguments"]} if {
	count(input.findings) > 0
} else := {"allow": false, "reasons": ["research may not call tools"]} if {
	input.agent.team == "research"
} else := {"allow": false, "reasons": ["the shell is for admins"]} if {
	input.server == "sh"
	not "admin" in input.agent.roles
} else := {"allow": false, "mode": "monitor", "reasons": ["texts starting with trial are on trial"]} if {
	startswith(text, "trial")
} else := {"allow": false, "reasons": ["text refused"]} if {
	startswith(text, "refuse")
} else := {"allow": true, "reasons": []}
"""

SHELL = """
[[upstreams]]
name = "sh"
transport = "builtin"
tools = "shell"
containment = "tight"
"""


def containment(work: Path) -> str:
    return (
        f'[containment]\nworkspace_root = "{work}/workspaces"\nuid_base = {UID_BASE}\nuid_count = 10\n'
        f'[containment.profiles.tight]\ntier = "sandbox"\nread_only = ["/usr"]\nread_write = ["{{workspace}}"]\n'
        'env = { PATH = "/usr/bin:/bin" }\n'
    )


def start(monitor: str) -> tuple[RunningGateway, Path]:
    work = Path(tempfile.mkdtemp(prefix="rollout-monitor.", dir="/tmp"))
    os.chmod(work, 0o711)  # worker uids walk down to their workspaces
    (work / "policy").mkdir()
    (work / "policy" / "gateway.rego").write_text(POLICY)
    port = free_port()
    config = default_config(
        port,
        work,
        stdio_upstream("echo", ECHO) + SHELL,
        extra=containment(work),
        policy=work / "policy",
    )
    config = config.replace("[audit]", f"max_argument_string = 64\n{monitor}\n[audit]", 1)
    return start_gateway(work, config, port), work


@pytest.fixture(scope="module")
def research_monitored() -> Iterator[RunningGateway]:
    gw, work = start('[[policy.monitor]]\nteam = "research"\n')
    yield gw
    gw.stop()
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def everything_monitored() -> Iterator[RunningGateway]:
    gw, work = start('[[policy.monitor]]\nteam = "*"\n')
    yield gw
    gw.stop()
    shutil.rmtree(work, ignore_errors=True)


def records_of(gw: RunningGateway, decision_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    recs = [r for r in gw.audit_records() if r.get("decision_id") == decision_id]
    decision = [r for r in recs if r["type"] == "decision"]
    outcome = [r for r in recs if r["type"] == "outcome"]
    assert len(decision) == 1 and len(outcome) == 1, recs
    return decision[0], outcome[0]


def last_call(gw: RunningGateway, tool: str) -> tuple[dict[str, Any], dict[str, Any]]:
    ids = [r["decision_id"] for r in gw.audit_records() if r.get("type") == "decision" and r.get("tool") == tool]
    return records_of(gw, ids[-1])


def metric(gw: RunningGateway, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx2.get(gw.admin_base + "/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def call(gw: RunningGateway, key: str, tool: str, args: dict[str, Any]) -> Any:
    async with mcp_client(gw.url, key) as c:
        return await c.call_tool(tool, args)


def text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def test_a_monitored_teams_denied_call_is_allowed_recorded_and_counted(
    research_monitored: RunningGateway,
) -> None:
    gw = research_monitored
    before = metric(gw, "mcp_gateway_tool_calls_total", team="research", decision="would_deny")
    r = await call(gw, RESEARCHER, "echo__echo", {"text": "hello"})
    assert not r.is_error and text(r) == "hello"
    decision, outcome = last_call(gw, "echo")
    assert decision["allow"] is False and decision["reasons"] == ["research may not call tools"]
    assert decision["mode"] == "monitor" and decision["monitor"] == "policy.monitor[0] team=research"
    assert outcome["outcome"] == "would_deny" and outcome["call_outcome"] == "ok"
    assert outcome["reasons"] == ["research may not call tools"]
    assert metric(gw, "mcp_gateway_tool_calls_total", team="research", decision="would_deny") == before + 1
    # A would-be denial is not a denial: the denials counter (reasons) is left alone.
    assert metric(gw, "mcp_gateway_denials_total", reason="research may not call tools") == 0
    # Other teams are enforced.
    denied = await call(gw, CI, "echo__echo", {"text": "refuse this"})
    assert denied.is_error and "Denied by policy: text refused" in text(denied)
    assert last_call(gw, "echo")[1]["outcome"] == "denied"


async def test_every_request_kind_is_monitored_alike(research_monitored: RunningGateway) -> None:
    """Prompts and resources go through the same admission stage as calls: a monitored denial goes through."""
    gw = research_monitored
    async with mcp_client(gw.url, RESEARCHER) as c:
        prompt = await c.get_prompt("echo__greet", {"who": "monitor"})
        assert "Hello, monitor!" in str(prompt.messages[0].content)
        read = await c.read_resource("echo://readme")
        assert "contents of echo://readme" in str(read.contents[0])
    recs = gw.audit_records()
    for action in ("prompts/get", "resources/read"):
        decision = [r for r in recs if r["type"] == "decision" and r["action"] == action][-1]
        assert decision["mode"] == "monitor" and decision["allow"] is False, decision
        _, outcome = records_of(gw, decision["decision_id"])
        assert outcome["outcome"] == "would_deny" and outcome["call_outcome"] == "ok"
        assert metric(gw, "mcp_gateway_requests_total", action=action, team="research", decision="would_deny") == 1


async def test_a_rule_on_trial_is_monitored_by_its_decision(research_monitored: RunningGateway) -> None:
    gw = research_monitored
    r = await call(gw, CI, "echo__echo", {"text": "trial run"})
    assert not r.is_error and text(r) == "trial run"
    decision, outcome = last_call(gw, "echo")
    assert decision["mode"] == "monitor" and decision["monitor"] == "policy"
    assert decision["result"]["mode"] == "monitor" and decision["allow"] is False
    assert outcome["outcome"] == "would_deny" and outcome["reasons"] == ["texts starting with trial are on trial"]
    assert metric(gw, "mcp_gateway_tool_calls_total", team="platform", decision="would_deny") >= 1


async def test_a_monitored_call_still_runs_in_its_sandbox(research_monitored: RunningGateway) -> None:
    gw = research_monitored
    r = await call(gw, RESEARCHER, "sh__run", {"command": "id -u; touch /usr/monitor-was-here"})
    s = r.structured_content
    assert not r.is_error and s is not None
    uid = int(s["stdout"].split()[0])
    assert uid != os.geteuid() and (os.geteuid() != 0 or UID_BASE <= uid < UID_BASE + 10)
    assert "Read-only file system" in s["stderr"] and not Path("/usr/monitor-was-here").exists()
    decision, outcome = last_call(gw, "run")
    assert decision["mode"] == "monitor" and outcome["outcome"] == "would_deny"
    assert outcome["containment"]["tier"] == "sandbox" and outcome["containment"]["profile"] == "tight"


async def test_lists_are_filtered_as_when_enforced(research_monitored: RunningGateway) -> None:
    async with mcp_client(research_monitored.url, RESEARCHER) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert "echo__echo" in names and "echo__pid" not in names
        with pytest.raises(MCPError, match="Unknown tool: echo__pid"):
            await c.call_tool("echo__pid", {})
    assert last_call(research_monitored, "pid")[1]["outcome"] == "denied_hidden"


async def test_safety_refusals_stay_refused_when_everything_is_monitored(everything_monitored: RunningGateway) -> None:
    gw = everything_monitored
    async with mcp_client(gw.url, CI) as c:
        # monitored: a plain denial of the policy goes through
        assert text(await c.call_tool("echo__echo", {"text": "refuse me"})) == "refuse me"
        # arguments the policy cannot see whole
        big = await c.call_tool("echo__echo", {"text": "x" * 100})
        assert big.is_error and "arguments exceed what the policy can see" in text(big)
        assert last_call(gw, "echo")[1]["outcome"] == "denied"
        # arguments carrying a secret the scanner found: never handed to an upstream in a dry run
        secret = await c.call_tool("echo__echo", {"text": "key AKIAIOSFODNN7EXAMPLE"})
        assert secret.is_error and "Denied by policy: a secret in the arguments" in text(secret)
        assert last_call(gw, "echo")[1]["outcome"] == "denied"
        # an engine failure (a malformed decision) fails closed
        boom = await c.call_tool("echo__echo", {"text": "boom"})
        assert boom.is_error and "policy evaluation failed" in text(boom)
        # a name past 128 characters
        with pytest.raises(MCPError, match="longer than 128"):
            await c.call_tool("echo__" + "n" * 200, {})
        # hidden equals missing: a missing tool and a hidden one
        with pytest.raises(MCPError, match="Unknown tool: echo__nope"):
            await c.call_tool("echo__nope", {})
        with pytest.raises(MCPError, match="Unknown tool: echo__pid"):
            await c.call_tool("echo__pid", {})
    outcomes = [r["outcome"] for r in gw.audit_records() if r["type"] == "outcome"]
    assert "not_found" in outcomes and "denied_hidden" in outcomes and "refused" in outcomes
    # identity failures are refused before anything can be monitored
    r = httpx2.post(gw.url, headers={"Authorization": "Bearer not-a-key"}, json={}, timeout=10)
    assert r.status_code == 401
    modes = [r for r in gw.audit_records() if r["type"] == "decision" and r.get("mode") == "monitor"]
    assert [r["reasons"] for r in modes] == [["text refused"]]


def test_monitor_entries_are_validated_at_load(tmp_path: Path) -> None:
    from gateway.config import ConfigError, parse_config

    for body, needle in (
        ({"monitor": [{}]}, "needs team or tool"),
        ({"monitor": [{"team": "re search"}]}, "policy.monitor[0].team"),
        ({"monitor": [{"team": "x", "tools": "y"}]}, "unknown key"),
    ):
        with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            parse_config({"policy": {"path": str(tmp_path), **body}}, "t.toml", tmp_path)
    with pytest.raises(ConfigError, match=r"policy\.shadow_path: .* does not exist"):
        parse_config({"policy": {"path": str(tmp_path), "shadow_path": "nope"}}, "t.toml", tmp_path)
    for shadow, needle in (
        ({"shadow_path": ".", "shadow_bundle_url": "http://b/x.tar.gz"}, "at most one of shadow_path"),
        ({"shadow_bundle_url": "http://user:pw@b/x.tar.gz"}, "without credentials"),
        ({"bundle_poll_s": 5.0}, "need bundle_url"),
    ):
        with pytest.raises(ConfigError, match=needle):
            parse_config({"policy": {"path": str(tmp_path), **shadow}}, "t.toml", tmp_path)
    ok = parse_config(
        {"policy": {"path": ".", "shadow_bundle_url": "http://b/x.tar.gz", "bundle_poll_s": 5.0}}, "t", tmp_path
    )
    assert ok.policy.shadow_bundle_url == "http://b/x.tar.gz"
