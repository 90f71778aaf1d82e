"""The dashboard's rollout row against a real Prometheus scraping a gateway that monitors a team and runs a shadow
policy: every query of the row returns data, and the counts are the calls made."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import anyio

from tests.conftest import ECHO, KEYS, default_config, free_port, mcp_client, start_gateway, stdio_upstream
from tests.test_observability_metrics import JOB, dashboard_targets, rollout_query, start_prometheus, substitute
from tests.test_rollout_shadow import LIVE, SHADOW, metric, wait_for, write_policy

CI, RESEARCHER = KEYS["ci-bot"][2], KEYS["researcher"][2]


async def calls(url: str) -> None:
    async with mcp_client(url, RESEARCHER) as c:  # denied by the live policy, monitored: would_deny
        assert not (await c.call_tool("echo__echo", {"text": "watched"})).is_error
    async with mcp_client(url, CI) as c:  # allowed live, denied by the shadow: a disagreement
        assert not (await c.call_tool("echo__echo", {"text": "bad"})).is_error


def test_rollout_panels_return_data(tmp_path: Path) -> None:
    live = write_policy(tmp_path / "live", LIVE)
    write_policy(tmp_path / "candidate", SHADOW)
    port = free_port()
    config = default_config(port, tmp_path, stdio_upstream("echo", ECHO), policy=live).replace(
        "[audit]", 'shadow_path = "candidate"\n[[policy.monitor]]\nteam = "research"\n\n[audit]', 1
    )
    gw = start_gateway(tmp_path, config, port)
    prom = None
    try:
        prom = start_prometheus(tmp_path / "prometheus", gw.admin_port)
        prom.wait_for_scrape_after(time.time())
        for phase in range(2):
            anyio.run(calls, gw.url)
            wait_for(gw, "mcp_gateway_policy_shadow_disagreements_total", 2 * (phase + 1))
            prom.wait_for_scrape_after(time.time())
        checked = 0
        for title, expr in dashboard_targets():
            if rollout_query(expr):
                values = [float(s["value"][1]) for s in prom.query(substitute(expr))]
                assert values and not all(math.isnan(v) for v in values), f"{title}: {expr} returned nothing"
                checked += 1
        assert checked >= 3
        calls_by = prom.values(f"mcp_gateway_tool_calls_total{JOB}", "team", "decision")
        assert calls_by == {("research", "would_deny"): 2, ("platform", "allow"): 2}
        assert prom.values(f"mcp_gateway_policy_shadow_disagreements_total{JOB}", "team", "live", "shadow") == {
            ("platform", "allow", "deny"): 2,
            ("research", "deny", "allow"): 2,  # the monitored call: live denied it (and let it through)
        }
        assert metric(gw, "mcp_gateway_policy_shadow_dropped_total") == 0
    finally:
        if prom is not None:
            prom.stop()
        gw.stop()
        shutil.rmtree(tmp_path / "prometheus", ignore_errors=True)
