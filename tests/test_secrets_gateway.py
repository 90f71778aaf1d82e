"""Secret scanning through the real gateway, the real SDK client and an upstream of ours whose results carry a
real-format RSA private key and AWS access key: results reach the agent redacted (or withheld), arguments carrying
a secret are denied by the shipped policy naming the kind and the path; all audited (kinds and paths, never the
values) and counted."""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import (
    KEYS,
    REPO,
    RunningGateway,
    default_config,
    free_port,
    mcp_client,
    start_gateway,
    stdio_upstream,
)
from tests.fixtures.fake_secrets import aws_access_key, jwt_token

pytestmark = pytest.mark.anyio
SERVER = [sys.executable, str(REPO / "tests" / "fixtures" / "secret_server.py")]
ACCESS_KEY = re.compile(r"(?:AKIA|ASIA)[A-Z2-7]{16}")
CI = KEYS["ci-bot"][2]


def _gateway(tmp: Path, extra: str = "", record_arguments: bool = False) -> RunningGateway:
    port = free_port()
    text = default_config(port, tmp, stdio_upstream("echo", SERVER), extra=extra)
    if record_arguments:
        text = text.replace("[audit]\n", "[audit]\nrecord_arguments = true\n", 1)
    return start_gateway(tmp, text, port)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    g = _gateway(tmp_path_factory.mktemp("secrets"))
    yield g
    g.stop()


def _leaks(text: str) -> bool:
    return "PRIVATE KEY-----" in text or ACCESS_KEY.search(text) is not None


def _outcome(gw: RunningGateway, decision_id: str) -> dict:
    return next(r for r in gw.audit_records() if r["type"] == "outcome" and r["decision_id"] == decision_id)


def _decision_ids(gw: RunningGateway, tool: str) -> list[str]:
    return [r["decision_id"] for r in gw.audit_records() if r["type"] == "decision" and r.get("tool") == tool]


def _metric(gw: RunningGateway, kind: str, where: str) -> float:
    text = httpx2.get(gw.admin_base + "/metrics").text
    line = f'mcp_gateway_secret_findings_total{{kind="{kind}",server="echo",where="{where}"}}'
    for row in text.splitlines():
        if row.startswith(line):
            return float(row.split()[-1])
    return 0.0


async def _ignore(progress: float, total: float | None, message: str | None) -> None:
    return None


@pytest.mark.parametrize("path", ["fast", "sdk", "modern"])
async def test_a_result_carrying_a_private_key_and_an_access_key_reaches_the_agent_redacted(
    gw: RunningGateway, path: str
) -> None:
    """Every way a call takes through the gateway (its fast path, the SDK's with a progress token, the stateless
    era) goes through the same scanning."""
    before = _metric(gw, "private-key", "result")
    async with mcp_client(gw.url, CI, "auto" if path == "modern" else "legacy") as c:
        progress = _ignore if path == "sdk" else None
        result = await c.call_tool("echo__leak", {}, progress_callback=progress)
    text = result.content[0].text  # type: ignore[union-attr]
    assert not result.is_error
    assert "[redacted: private-key]" in text and "[redacted: aws-access-key]" in text
    assert not _leaks(text)
    assert text.startswith("deploy notes\nregion: eu-west-1\n") and text.endswith("end of notes")
    outcome = _outcome(gw, _decision_ids(gw, "leak")[-1])
    assert outcome["outcome"] == "ok" and outcome["secrets_action"] == "redacted"
    assert sorted(outcome["secrets"], key=lambda f: f["kind"]) == [
        {"kind": "aws-access-key", "path": "result.content[0].text", "where": "result"},
        {"kind": "private-key", "path": "result.content[0].text", "where": "result"},
    ]
    assert not _leaks(gw.audit.read_text()) and not _leaks(gw.log.read_text())
    assert _metric(gw, "private-key", "result") == before + 1


async def test_structured_content_resources_and_prompts_are_redacted(gw: RunningGateway) -> None:
    async with mcp_client(gw.url, CI) as c:
        structured = await c.call_tool("echo__leak_structured", {})
        read = await c.read_resource("secret://deploy-key")
        prompt = await c.get_prompt("echo__deploy", {})
    assert structured.structured_content == {
        "region": "eu-west-1",
        "aws": {"access_key_id": "[redacted: aws-access-key]"},
        "ssh_key": "[redacted: private-key]\n",  # the PEM block is replaced; the newline after it stays
    }
    assert read.contents[0].text.strip() == "[redacted: private-key]"  # type: ignore[union-attr]
    assert prompt.messages[0].content.text == "Deploy with access key [redacted: aws-access-key]."  # type: ignore[union-attr]
    outcome = _outcome(gw, _decision_ids(gw, "leak_structured")[-1])
    assert {f["path"] for f in outcome["secrets"]} == {
        "result.structuredContent.aws.access_key_id",
        "result.structuredContent.ssh_key",
    }


@pytest.mark.parametrize("progress", [None, _ignore])
async def test_an_argument_carrying_a_secret_is_denied_by_the_shipped_policy(gw: RunningGateway, progress) -> None:
    token = "ghp_" + "".join("aB3xY9kLmN2pQ7rS8tU4vW5zC6dE1fG0hJiK"[:36])
    before = _metric(gw, "github-token", "arguments")
    async with mcp_client(gw.url, CI) as c:
        result = await c.call_tool(
            "echo__echo",
            {"text": "hi", "env": {"TOKEN": token}, "items": ["a", "b", aws_access_key()]},
            progress_callback=progress,
        )
    text = result.content[0].text  # type: ignore[union-attr]
    assert result.is_error
    assert "argument arguments.env.TOKEN carries a secret (github-token)" in text
    assert "argument arguments.items[2] carries a secret (aws-access-key)" in text
    assert token not in text
    decision = next(r for r in gw.audit_records() if r["type"] == "decision" and r["decision_id"] in text)
    assert decision["allow"] is False
    assert decision["input"]["findings"] == [
        {"kind": "github-token", "path": "arguments.env.TOKEN", "where": "arguments"},
        {"kind": "aws-access-key", "path": "arguments.items[2]", "where": "arguments"},
    ] or sorted(decision["input"]["findings"], key=lambda f: f["path"]) == [
        {"kind": "github-token", "path": "arguments.env.TOKEN", "where": "arguments"},
        {"kind": "aws-access-key", "path": "arguments.items[2]", "where": "arguments"},
    ]
    assert token not in gw.audit.read_text() and token not in gw.log.read_text()
    assert _metric(gw, "github-token", "arguments") == before + 1


async def test_a_team_may_allow_a_finding_by_policy(gw: RunningGateway) -> None:
    """rego/data.json lets platform pass a JWT as echo's test_jwt argument, and nowhere else."""
    async with mcp_client(gw.url, CI) as c:
        allowed = await c.call_tool("echo__echo", {"text": "ok", "test_jwt": jwt_token()})
        denied = await c.call_tool("echo__echo", {"text": "ok", "token": jwt_token()})
    assert not allowed.is_error and allowed.content[0].text == "ok"  # type: ignore[union-attr]
    assert denied.is_error and "argument arguments.token carries a secret (jwt)" in denied.content[0].text  # type: ignore[union-attr]


async def test_a_clean_call_is_untouched(gw: RunningGateway) -> None:
    async with mcp_client(gw.url, CI) as c:
        result = await c.call_tool("echo__clean", {"text": "the token bucket"})
    assert result.content[0].text == "nothing to see here: the token bucket refills every second"  # type: ignore[union-attr]
    outcome = _outcome(gw, _decision_ids(gw, "clean")[-1])
    assert "secrets" not in outcome


async def test_false_positives_are_fixed_by_config_and_results_can_be_withheld(tmp_path: Path) -> None:
    known = "AKIA" + "QQQQ2222QQQQ2222"  # a value a team knows is not a secret (a documented test key)
    digest = hashlib.sha256(known.encode()).hexdigest()
    extra = f"""
[secrets]
allow_digests = ["{digest}"]
kinds = {{ jwt = false }}

[[secrets.overrides]]
server = "echo"
tool = "leak"
on_result = "withhold"
"""
    gw = _gateway(tmp_path, extra, record_arguments=True)
    token = "glpat-" + "Zx8kq2LmN4pR7sT9vW1y"
    try:
        async with mcp_client(gw.url, CI) as c:
            denied = await c.call_tool("echo__echo", {"text": "x", "note": token})
            allowed = await c.call_tool("echo__echo", {"text": known})
            jwt = await c.call_tool("echo__echo", {"text": "x", "note": jwt_token()})
            withheld = await c.call_tool("echo__leak", {})
            redacted = await c.call_tool("echo__leak_structured", {})
        assert denied.is_error and "argument arguments.note carries a secret (gitlab-token)" in denied.content[0].text  # type: ignore[union-attr]
        # record_arguments keeps argument values for replay, but never a secret's
        recorded = next(r for r in gw.audit_records() if r["type"] == "decision" and r.get("tool") == "echo")
        assert recorded["input"]["arguments"] == {"text": "x", "note": "[redacted: gitlab-token]"}
        assert token not in gw.audit.read_text()
        assert not allowed.is_error and allowed.content[0].text == known  # type: ignore[union-attr]
        assert not jwt.is_error  # the jwt detector is off
        text = withheld.content[0].text  # type: ignore[union-attr]
        assert withheld.is_error and text.startswith("The result was withheld: it carried a secret (")
        assert "private-key at result.content[0].text" in text and not _leaks(text)
        assert redacted.structured_content["ssh_key"].strip() == "[redacted: private-key]"  # type: ignore[index]
        outcome = _outcome(gw, _decision_ids(gw, "leak")[-1])
        assert outcome["secrets_action"] == "withheld" and outcome["outcome"] == "ok"
        assert "PRIVATE KEY-----" not in gw.audit.read_text()  # (the allowed AKIA value is recorded: it is allowed)
    finally:
        gw.stop()


async def test_scanning_can_be_turned_off_per_tool(tmp_path: Path) -> None:
    extra = '[[secrets.overrides]]\ntool = "leak"\nscan_results = false\n'
    gw = _gateway(tmp_path, extra)
    try:
        async with mcp_client(gw.url, CI) as c:
            raw = await c.call_tool("echo__leak", {})
        assert _leaks(raw.content[0].text)  # type: ignore[union-attr]
    finally:
        gw.stop()
