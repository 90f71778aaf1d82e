"""Every call counted and recorded: metrics move by exactly the calls made; audit lines match them."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from gateway.audit import verify_chain
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


@pytest.fixture
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("rec")
    port = free_port()
    upstreams = stdio_upstream("time", ["mcp-server-time", "--local-timezone", "UTC"]) + stdio_upstream("echo", ECHO)
    gw = start_gateway(workdir, default_config(port, workdir, upstreams), port)
    yield gw
    gw.stop()


def scrape(gw: RunningGateway) -> dict[str, float]:
    out = {}
    for line in httpx2.get(gw.admin_base + "/metrics").text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


def calls(metrics: dict[str, float], **labels: str) -> float:
    total = 0.0
    for name, value in metrics.items():
        if not name.startswith("mcp_gateway_tool_calls_total{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', name))
        if all(found.get(k) == v for k, v in labels.items()):
            total += value
    return total


async def test_metrics_and_audit_match_the_calls_made(gateway: RunningGateway) -> None:
    before = scrape(gateway)
    async with mcp_client(gateway.url, KEYS["ci-bot"][2]) as c:
        for _ in range(3):
            assert not (await c.call_tool("echo__echo", {"text": "secret-payload"})).is_error
        for _ in range(2):
            assert (await c.call_tool("echo__delete_everything", {"path": "/"})).is_error
    async with mcp_client(gateway.url, KEYS["researcher"][2]) as c:
        with pytest.raises(MCPError):
            await c.call_tool("echo__echo", {"text": "hidden"})
    after = scrape(gateway)

    def delta(**labels: str) -> float:
        return calls(after, **labels) - calls(before, **labels)

    assert delta(server="echo", tool="echo", agent="ci-bot", team="platform", decision="allow") == 3
    assert delta(server="echo", tool="delete_everything", agent="ci-bot", decision="deny") == 2
    assert delta(server="echo", tool="echo", agent="researcher", team="research", decision="deny") == 1
    assert delta() == 6
    assert (
        after['mcp_gateway_tool_call_seconds_count{server="echo"}']
        - before.get('mcp_gateway_tool_call_seconds_count{server="echo"}', 0)
        == 3
    )
    assert after["mcp_gateway_policy_decision_seconds_count"] > before["mcp_gateway_policy_decision_seconds_count"]

    records = gateway.audit_records()
    tool_decisions = [r for r in records if r["type"] == "decision" and r["action"] == "tools/call"]
    assert [(r["agent"], r["tool"], r["allow"]) for r in tool_decisions] == (
        [("ci-bot", "echo", True)] * 3 + [("ci-bot", "delete_everything", False)] * 2 + [("researcher", "echo", False)]
    )
    for r in tool_decisions:
        assert r["bundles"]["gateway"]["revision"]
        assert r["arguments_digest"] and len(r["arguments_digest"]) == 64
        assert "secret-payload" not in str(r)  # argument values are not recorded by default
    denied = tool_decisions[3]
    assert denied["reasons"] == ["destructive tools need the admin role"]
    outcomes = {r["decision_id"]: r for r in records if r["type"] == "outcome"}
    assert all(outcomes[r["decision_id"]]["outcome"] == "ok" for r in tool_decisions[:3])
    assert outcomes[denied["decision_id"]]["outcome"] == "denied"
    assert outcomes[tool_decisions[5]["decision_id"]]["outcome"] == "denied_hidden"
    # Outcome lines come after their decision lines.
    order = [r["decision_id"] for r in records if "decision_id" in r]
    for r in tool_decisions:
        assert order.index(r["decision_id"]) < len(order) - 1 - order[::-1].index(r["decision_id"])
    assert verify_chain([gateway.audit]).ok


async def test_upstream_crash_gives_a_clear_error_and_restarts(gateway: RunningGateway) -> None:
    async with mcp_client(gateway.url, KEYS["ci-bot"][2]) as c:
        pid_before = (await c.call_tool("echo__pid", {})).content[0].text  # type: ignore[union-attr]
        with pytest.raises(MCPError) as err:
            await c.call_tool("echo__crash", {})
        assert "upstream 'echo'" in err.value.message
        pid_after = None
        for _ in range(50):  # the supervisor restarts it with a short backoff
            try:
                pid_after = (await c.call_tool("echo__pid", {})).content[0].text  # type: ignore[union-attr]
                break
            except MCPError:
                import anyio

                await anyio.sleep(0.1)
        assert pid_after is not None and pid_after != pid_before
    crash = [r for r in gateway.audit_records() if r["type"] == "outcome" and r["outcome"] == "upstream_error"]
    assert crash and crash[0]["error_kind"] == "crashed"
    metrics = scrape(gateway)
    assert metrics['mcp_gateway_upstream_errors_total{kind="crashed",server="echo"}'] >= 1
    assert metrics['mcp_gateway_upstream_restarts_total{server="echo"}'] >= 1


def test_readyz_and_healthz(gateway: RunningGateway) -> None:
    assert httpx2.get(gateway.base + "/healthz").status_code == 200
    ready = httpx2.get(gateway.admin_base + "/readyz").json()
    assert ready["ready"] is True
    assert ready["upstreams"]["time"]["up"] and ready["upstreams"]["echo"]["up"]
