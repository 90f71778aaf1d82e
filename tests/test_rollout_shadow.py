"""Shadow revision through the real gateway and the real SDK client: a candidate policy decides beside the live
one, off the call path; its disagreements are recorded and counted, the calls are answered by the live policy
alone, and ``mcp-gateway policy diff`` summarises them from the audit log."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.conftest import (
    ECHO,
    KEYS,
    RunningGateway,
    default_config,
    free_port,
    gateway_cli,
    mcp_client,
    start_gateway,
    stdio_upstream,
)

pytestmark = pytest.mark.anyio

CI, RESEARCHER = KEYS["ci-bot"][2], KEYS["researcher"][2]

LIVE = """package gateway

import rego.v1

default decision := {"allow": false, "reasons": ["no rule allows this request"]}

decision := {"allow": true, "reasons": []} if input.agent.team == "platform"

decision := {"allow": true, "reasons": []} if {
	input.agent.team == "research"
	input.action != "tools/call"
}
"""

# The candidate: denies platform's echo texts starting "bad", and lets research call echo.
SHADOW = """package gateway

import rego.v1

default decision := {"allow": false, "reasons": ["no rule allows this request"]}

decision := {"allow": false, "reasons": ["bad texts are refused"]} if {
	input.agent.team == "platform"
	startswith(input.arguments.text, "bad")
} else := {"allow": true, "reasons": []} if {
	input.agent.team in {"platform", "research"}
}
"""


def write_policy(where: Path, text: str) -> Path:
    where.mkdir(parents=True)
    (where / "gateway.rego").write_text(text)
    return where


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    work = tmp_path_factory.mktemp("shadow")
    live = write_policy(work / "live", LIVE)
    write_policy(work / "candidate", SHADOW)
    port = free_port()
    config = default_config(port, work, stdio_upstream("echo", ECHO), policy=live)
    config = config.replace("[audit]", 'shadow_path = "candidate"\n\n[audit]', 1)
    gw = start_gateway(work, config, port)
    yield gw
    gw.stop()


def metric(gw: RunningGateway, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx2.get(gw.admin_base + "/metrics").text.splitlines():
        if line.startswith(name) and line[len(name)] in "{ " and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(gw: RunningGateway, name: str, value: float, timeout: float = 30) -> None:
    """The shadow works in the background: wait until it has compared what was offered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(gw, name) >= value:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} did not reach {value}:\n{gw.log.read_text()[-3000:]}")


def texts(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def test_disagreements_are_recorded_and_counted_and_calls_are_unaffected(shadowed: RunningGateway) -> None:
    gw = shadowed
    async with mcp_client(gw.url, CI) as c:
        for t in ("bad one", "fine", "bad two"):
            r = await c.call_tool("echo__echo", {"text": t})
            assert not r.is_error and texts(r) == t  # the live policy alone answers
    async with mcp_client(gw.url, RESEARCHER) as c:
        r = await c.call_tool("echo__echo", {"text": "let me"})
        assert r.is_error and "Denied by policy: no rule allows this request" in texts(r)
    decided = [r for r in gw.audit_records() if r["type"] == "decision"]
    wait_for(gw, "mcp_gateway_policy_shadow_decisions_total", len(decided))
    disagreements = "mcp_gateway_policy_shadow_disagreements_total"
    assert metric(gw, disagreements, team="platform", live="allow", shadow="deny") == 2
    assert metric(gw, disagreements, team="research", live="deny", shadow="allow") == 1
    assert metric(gw, "mcp_gateway_policy_shadow_dropped_total") == 0
    records = gw.audit_records()
    found = [r for r in records if r["type"] == "shadow_disagreement"]
    assert len(found) == 3
    ids = {r["decision_id"]: r for r in records if r["type"] == "decision"}
    for rec in found:
        decision = ids[rec["decision_id"]]  # the same id as the live decision's record
        assert rec["live"]["allow"] == decision["allow"] and rec["shadow"]["allow"] != decision["allow"]
        assert rec["live"]["revision"] == decision["bundles"]["gateway"]["revision"]
        assert rec["shadow"]["revision"] != rec["live"]["revision"]
        assert rec["tool"] == "echo" and rec["server"] == "echo"
    bad = [r for r in found if r["team"] == "platform"]
    assert all(r["shadow"]["reasons"] == ["bad texts are refused"] for r in bad)
    # The records are part of the hash chain.
    verify = gateway_cli("audit", "verify", str(gw.audit))
    assert verify.returncode == 0, verify.stdout + verify.stderr

    out = gateway_cli("policy", "diff", "--config", str(gw.config))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("3 shadow disagreement(s)")
    assert "live allows, shadow would deny:" in lines
    assert "live denies, shadow would allow:" in lines
    row = next(line for line in lines if "bad texts are refused" in line)
    assert row.split() == ["2", "team", "platform", "echo__echo", "bad", "texts", "are", "refused"]
    example_line = lines[lines.index(row) + 1]
    assert all(r["decision_id"] in example_line for r in bad)
    assert any("team research  echo__echo  no rule allows this request" in line for line in lines)

    as_json = gateway_cli("policy", "diff", "--config", str(gw.config), "--json", "--examples", "1")
    doc = json.loads(as_json.stdout)
    assert doc["disagreements"] == 3
    rows = {(r["live"], r["shadow"], r["team"], r["reason"]): r for r in doc["rows"]}
    assert rows["allow", "deny", "platform", "bad texts are refused"]["count"] == 2
    assert len(rows["allow", "deny", "platform", "bad texts are refused"]["examples"]) == 1


async def test_an_edited_candidate_is_reloaded_and_shadows_from_then_on(shadowed: RunningGateway) -> None:
    gw = shadowed
    before = {r["shadow"]["revision"] for r in gw.audit_records() if r["type"] == "shadow_disagreement"}
    (gw.workdir / "candidate" / "gateway.rego").write_text(
        SHADOW.replace('"bad"', '"fine"').replace("bad texts", "fine texts")
    )
    deadline = time.monotonic() + 60
    while "shadow policy reload (files changed)" not in gw.log.read_text():
        assert time.monotonic() < deadline, gw.log.read_text()[-3000:]
        time.sleep(0.2)
    async with mcp_client(gw.url, CI) as c:
        assert texts(await c.call_tool("echo__echo", {"text": "fine again"})) == "fine again"
    wait_for(gw, "mcp_gateway_policy_shadow_disagreements_total", 4)
    last = [r for r in gw.audit_records() if r["type"] == "shadow_disagreement"][-1]
    assert last["shadow"]["reasons"] == ["fine texts are refused"]
    assert last["shadow"]["revision"] not in before


def test_policy_diff_without_disagreements(tmp_path: Path) -> None:
    (tmp_path / "rego").mkdir()
    (tmp_path / "audit.jsonl").write_text('{"type": "decision", "decision_id": "x"}\n')
    (tmp_path / "gateway.toml").write_text(f'[policy]\npath = "rego"\n[audit]\npath = "{tmp_path / "audit.jsonl"}"\n')
    out = gateway_cli("policy", "diff", "--config", str(tmp_path / "gateway.toml"))
    assert out.returncode == 0 and out.stdout.strip() == "no shadow disagreements recorded"


async def test_a_full_shadow_queue_drops_and_counts_and_never_waits(tmp_path: Path) -> None:
    """The offer on the call path never waits: past the queue's bound, decisions are dropped and counted."""
    from gateway.audit import AuditLog
    from gateway.config import PolicyConfig
    from gateway.metrics import Metrics
    from gateway.policy import Decision
    from gateway.policy.embedded import EmbeddedEngine
    from gateway.policy.shadow import Offered, Shadow, shadow_config
    from gateway.record import Recorder

    policy = write_policy(tmp_path / "candidate", SHADOW)
    cfg = shadow_config(PolicyConfig(path="live"), str(policy))
    assert cfg.path == str(policy) and cfg.threads == 1 and cfg.watch is False
    metrics = Metrics()
    audit = AuditLog(tmp_path / "audit.jsonl", False, 0, 0)
    engine = EmbeddedEngine(policy, "gateway/decision", 200, 1, 1, None)
    shadow = Shadow(engine, Recorder(audit, metrics, False), metrics, 2)
    agent = {"id": "a", "team": "platform", "roles": [], "auth": "api_key", "claims": {}}
    live = Decision(True, (), "live")
    inp = {"agent": agent, "action": "tools/call", "server": "echo", "tool": "echo", "arguments": {"text": "bad"}}
    item = Offered("d1", "a", "platform", "tools/call", "echo", "echo", inp, live)
    for _ in range(5):
        shadow.offer(item)  # synchronous: nothing here can wait
    assert metrics.shadow_dropped._value.get() == 3
    async with anyio.create_task_group() as tg:
        tg.start_soon(shadow.run)
        with anyio.fail_after(30):
            while metrics.shadow_decisions._value.get() < 2:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    await shadow.aclose()
    audit.close()
    recs = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["type"] for r in recs] == ["shadow_disagreement", "shadow_disagreement"]
    shutil.rmtree(policy)


async def test_a_candidate_bundle_from_a_server_shadows_once_it_arrives(tmp_path: Path) -> None:
    """[policy] shadow_bundle_url: the candidate is polled from a bundle server (as bundle_url is); nothing is
    shadowed before its first bundle, then its disagreements are recorded under the bundle's revision."""
    from gateway.bundles.archive import repack
    from tests.fixtures.bundle_server import BundleServer

    live = write_policy(tmp_path / "live", LIVE)
    with BundleServer() as server:
        port = free_port()
        config = default_config(port, tmp_path, stdio_upstream("echo", ECHO), policy=live).replace(
            "[audit]", f'shadow_bundle_url = "{server.url}"\nbundle_poll_s = 0.5\n\n[audit]', 1
        )
        gw = start_gateway(tmp_path, config, port)
        try:
            async with mcp_client(gw.url, CI) as c:
                assert texts(await c.call_tool("echo__echo", {"text": "bad before"})) == "bad before"
            assert metric(gw, "mcp_gateway_policy_shadow_decisions_total") == 0  # no candidate yet: not offered
            server.serve(repack({".manifest": b'{"revision": "candidate-7"}', "gateway.rego": SHADOW.encode()}))
            deadline = time.monotonic() + 60
            while "shadow policy reload (bundle): revision candidate-7" not in gw.log.read_text():
                assert time.monotonic() < deadline, gw.log.read_text()[-3000:]
                time.sleep(0.2)
            async with mcp_client(gw.url, CI) as c:
                assert texts(await c.call_tool("echo__echo", {"text": "bad after"})) == "bad after"
            wait_for(gw, "mcp_gateway_policy_shadow_disagreements_total", 1)
            found = [r for r in gw.audit_records() if r["type"] == "shadow_disagreement"]
            assert [r["shadow"]["revision"] for r in found] == ["candidate-7"]
            assert found[0]["shadow"]["reasons"] == ["bad texts are refused"]
            # the live policy's bundle metrics are the live policy's alone
            assert metric(gw, "mcp_gateway_policy_bundle_polls_total") == 0
        finally:
            gw.stop()
