#!/usr/bin/env python3
"""Writes deploy/grafana/mcp-gateway.json, the gateway's Grafana dashboard.

The dashboard is generated so its queries stay consistent (one label selector, one place per metric name);
edit this script, run it, commit both. tests/test_observability_metrics.py runs every query it writes
against a real Prometheus scraping a real gateway.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "mcp-gateway.json"
DS = {"type": "prometheus", "uid": "${datasource}"}

INST = 'instance=~"$instance"'
CALLS = f'{INST},team=~"$team",agent=~"$agent",server=~"$server"'
RI = "$__rate_interval"


class Layout:
    """Places panels left to right on Grafana's 24-column grid, starting a new line when one is full."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": self._id(),
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            }
        )
        self.y += 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0

    def add(self, panel: dict[str, Any], w: int = 12, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def targets(*exprs: tuple[str, str]) -> list[dict[str, Any]]:
    return [
        {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend, "range": True}
        for i, (expr, legend) in enumerate(exprs)
    ]


def timeseries(title: str, desc: str, unit: str, *exprs: tuple[str, str], stack: bool = False) -> dict[str, Any]:
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
        custom["fillOpacity"] = 40
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": targets(*exprs),
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(
    title: str, desc: str, unit: str, expr: str, legend: str = "", thresholds: list[Any] | None = None
) -> dict[str, Any]:
    steps = thresholds or [{"color": "green", "value": None}]
    return {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": targets((expr, legend)),
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        },
    }


def bars(title: str, desc: str, expr: str, legend: str) -> dict[str, Any]:
    """A ranked list (top N over the dashboard's time range)."""
    t = targets((expr, legend))
    t[0]["instant"] = True
    t[0]["range"] = False
    return {
        "type": "bargauge",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": t,
        "fieldConfig": {"defaults": {"unit": "short", "min": 0}, "overrides": []},
        "options": {
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
    }


def quantiles(metric: str, by: str, sel: str) -> list[tuple[str, str]]:
    by_le = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [
        (
            f"histogram_quantile({q}, sum by ({by_le}) (rate({metric}_bucket{{{sel}}}[{RI}])))",
            f"p{int(q * 100)}{suffix}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def build() -> dict[str, Any]:
    lay = Layout()

    lay.row("Calls and decisions")
    lay.add(
        timeseries(
            "Tool calls by decision",
            "tools/call per second: allow, deny (policy said no, or unknown tool), error "
            "(the engine failed or the audit record could not be written: fail closed), would_deny (denied by "
            "the policy, let through in monitor mode).",
            "reqps",
            (f"sum by (decision) (rate(mcp_gateway_tool_calls_total{{{CALLS}}}[{RI}]))", "{{decision}}"),
            stack=True,
        )
    )
    lay.add(
        stat(
            "Deny ratio",
            "Denied and failed tool calls over all tool calls, over the dashboard's time range.",
            "percentunit",
            f'sum(increase(mcp_gateway_tool_calls_total{{{CALLS},decision=~"deny|error"}}[$__range])) '
            f"/ clamp_min(sum(increase(mcp_gateway_tool_calls_total{{{CALLS}}}[$__range])), 1)",
            thresholds=[
                {"color": "green", "value": None},
                {"color": "orange", "value": 0.2},
                {"color": "red", "value": 0.5},
            ],
        ),
        w=4,
    )
    lay.add(
        stat(
            "Auth failures",
            "Requests refused before an identity was established, over the time range.",
            "short",
            f"sum(increase(mcp_gateway_auth_failures_total{{{INST}}}[$__range]))",
            thresholds=[
                {"color": "green", "value": None},
                {"color": "orange", "value": 10},
                {"color": "red", "value": 100},
            ],
        ),
        w=4,
    )
    lay.add(
        stat(
            "Active sessions",
            "Open MCP sessions of agents (2025 protocol era).",
            "short",
            f"sum(mcp_gateway_sessions{{{INST}}})",
        ),
        w=4,
    )
    lay.add(
        timeseries(
            "Allowed vs denied per team",
            "Tool calls per second by team and decision.",
            "reqps",
            (
                f'sum by (team, decision) (rate(mcp_gateway_tool_calls_total{{{CALLS},decision=~"allow|deny"}}[{RI}]))',
                "{{team}} {{decision}}",
            ),
        )
    )
    lay.add(
        timeseries(
            "Allowed vs denied per agent",
            'Tool calls per second by agent and decision. Agents past metrics.max_agents are counted as "other".',
            "reqps",
            (
                f'sum by (agent, decision) (rate(mcp_gateway_tool_calls_total{{{CALLS},decision=~"allow|deny"}}[{RI}]))',  # noqa: E501
                "{{agent}} {{decision}}",
            ),
        )
    )
    lay.add(
        bars(
            "Calls per tool (top 15)",
            "Tool calls over the time range by upstream, tool and decision.",
            f"topk(15, sum by (server, tool, decision) (increase(mcp_gateway_tool_calls_total{{{CALLS}}}[$__range])))",
            "{{server}}/{{tool}} {{decision}}",
        )
    )
    lay.add(
        bars(
            "Top deny reasons",
            "Reasons the policy gave for denials over the time range (a denial with several "
            'reasons counts under each). Reasons past metrics.max_reasons are counted as "other".',
            f'topk(10, sum by (reason) (increase(mcp_gateway_denials_total{{{INST},team=~"$team",server=~"$server"}}'
            f"[$__range])))",
            "{{reason}}",
        )
    )
    lay.add(
        timeseries(
            "Other policy-checked requests",
            "Lists, prompts, resources and other non-call requests per second "
            '(server "unknown": the aggregate endpoint /mcp).',
            "reqps",
            (
                f'sum by (action, decision) (rate(mcp_gateway_requests_total{{{INST},team=~"$team"}}[{RI}]))',
                "{{action}} {{decision}}",
            ),
        ),
        w=24,
    )

    lay.row("Policy")
    lay.add(
        timeseries(
            "Policy decision latency",
            "Time to evaluate one decision (every call, list item and request).",
            "s",
            *quantiles("mcp_gateway_policy_decision_seconds", "", INST),
        )
    )
    lay.add(
        timeseries(
            "Policy decisions and errors",
            "Decisions per second, and decisions that failed closed because the "
            "engine failed (every one of them denied a request).",
            "reqps",
            (f"sum(rate(mcp_gateway_policy_decision_seconds_count{{{INST}}}[{RI}]))", "decisions"),
            (f"sum(rate(mcp_gateway_policy_errors_total{{{INST}}}[{RI}]))", "errors"),
        )
    )
    lay.add(
        bars(
            "Policy revision in force",
            "The policy revision each gateway instance runs.",
            f"count by (instance, revision) (mcp_gateway_policy_revision_info{{{INST}}})",
            "{{instance}} {{revision}}",
        ),
        h=6,
    )
    lay.add(
        bars(
            "Policy reloads",
            "Reloads over the time range by result: success, unchanged, compile_error and "
            "test_failure (refused: the previous revision kept serving).",
            f"sum by (result) (increase(mcp_gateway_policy_reloads_total{{{INST}}}[$__range]))",
            "{{result}}",
        ),
        h=6,
    )
    lay.add(
        bars(
            "Fleet convergence: replicas per policy revision",
            "How many replicas serve each revision (a bundle's manifest revision with [policy] bundle_url): one bar "
            "once a new bundle has reached every replica; a revision refused by its tests or signature never appears.",
            f"count by (revision) (mcp_gateway_policy_bundle_info{{{INST}}} == 1)",
            "{{revision}}",
        ),
        h=6,
    )

    lay.row("Rolling out policy: monitor mode and shadow revision")
    lay.add(
        timeseries(
            "Would-deny calls per team (monitor mode)",
            "Tool calls the policy denied that monitor mode let through ([[policy.monitor]] entries and rules "
            'on trial, mode "monitor"), per second: what enforcing would deny. docs/policy.md, "Rolling out a rule".',
            "reqps",
            (
                f'sum by (team) (rate(mcp_gateway_tool_calls_total{{{CALLS},decision="would_deny"}}[{RI}]))',
                "{{team}}",
            ),
        ),
        w=8,
    )
    lay.add(
        bars(
            "Would-deny calls per tool (top 10)",
            "Tool calls let through in monitor mode over the time range, by upstream and tool.",
            f'topk(10, sum by (server, tool) (increase(mcp_gateway_tool_calls_total{{{CALLS},decision="would_deny"}}'
            f"[$__range])))",
            "{{server}}/{{tool}}",
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Shadow policy disagreements",
            "Decisions where the shadow policy ([policy] shadow_path) disagreed with the live one, per second, by "
            "team and direction (live/shadow); dropped: decisions the shadow's full queue skipped. "
            "mcp-gateway policy diff lists them.",
            "reqps",
            (
                f"sum by (team, live, shadow) "
                f'(rate(mcp_gateway_policy_shadow_disagreements_total{{{INST},team=~"$team"}}[{RI}]))',
                "{{team}} live {{live}}, shadow {{shadow}}",
            ),
            (f"sum(rate(mcp_gateway_policy_shadow_dropped_total{{{INST}}}[{RI}]))", "dropped"),
        ),
        w=8,
    )

    lay.row("Upstreams")
    lay.add(
        timeseries(
            "Tool call latency per upstream",
            "Allowed tool calls, gateway in to gateway out (upstream time plus "
            "the gateway's own few hundred microseconds).",
            "s",
            *quantiles("mcp_gateway_tool_call_seconds", "server", f'{INST},server=~"$server"'),
        )
    )
    lay.add(
        timeseries(
            "Upstream errors by kind",
            "Upstream failures per second: timeouts, crashes, protocol errors, and the "
            "upstream's own JSON-RPC errors (remote_error).",
            "reqps",
            (
                f'sum by (server, kind) (rate(mcp_gateway_upstream_errors_total{{{INST},server=~"$server"}}[{RI}]))',
                "{{server}} {{kind}}",
            ),
        )
    )
    lay.add(
        timeseries(
            "Upstreams up",
            "1 when the gateway's connection to the upstream is up.",
            "short",
            (f'min by (server) (mcp_gateway_upstream_up{{{INST},server=~"$server"}})', "{{server}}"),
        )
    )
    lay.add(
        timeseries(
            "Upstream restarts",
            "Upstream processes that died and were restarted.",
            "short",
            (
                f'sum by (server) (increase(mcp_gateway_upstream_restarts_total{{{INST},server=~"$server"}}[{RI}]))',
                "{{server}}",
            ),
        )
    )

    lay.row("Containment")
    lay.add(
        timeseries(
            "Workers by upstream and tier",
            "Contained worker processes alive.",
            "short",
            (f'sum by (server, tier) (mcp_gateway_workers{{{INST},server=~"$server"}})', "{{server}} {{tier}}"),
        )
    )
    lay.add(
        timeseries(
            "Worker kills by reason",
            "Workers killed for breaching a limit (timeout, memory, pids, cpu) or found crashed.",
            "short",
            (
                f'sum by (server, reason) (increase(mcp_gateway_worker_kills_total{{{INST},server=~"$server"}}[{RI}]))',
                "{{server}} {{reason}}",
            ),
        )
    )
    lay.add(
        timeseries(
            "Worker starts and start time",
            "Worker starts per second, and the p95 start time.",
            "s",
            (
                f'sum by (server, tier) (rate(mcp_gateway_worker_starts_total{{{INST},server=~"$server"}}[{RI}]))',
                "starts/s {{server}} {{tier}}",
            ),
            (
                f"histogram_quantile(0.95, sum by (le) (rate(mcp_gateway_worker_start_seconds_bucket{{{INST}}}[{RI}])))",  # noqa: E501
                "p95 start time",
            ),
        )
    )
    lay.add(
        timeseries(
            "Egress refusals",
            "Connections from contained workers that the egress proxy refused.",
            "short",
            (
                f'sum by (server) (increase(mcp_gateway_egress_denied_total{{{INST},server=~"$server"}}[{RI}]))',
                "{{server}}",
            ),
        )
    )

    lay.row("Sessions, authentication, audit")
    lay.add(
        timeseries(
            "Active sessions",
            "Open MCP sessions per gateway instance.",
            "short",
            (f"sum by (instance) (mcp_gateway_sessions{{{INST}}})", "{{instance}}"),
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Auth failures by reason",
            "missing, malformed, bad_key, bad_token, expired, bad_audience, bad_issuer.",
            "reqps",
            (f"sum by (reason) (rate(mcp_gateway_auth_failures_total{{{INST}}}[{RI}]))", "{{reason}}"),
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Audit records and write failures",
            "Records written per second by type; write failures refuse the "
            "call (nothing reaches an upstream unrecorded), so any failure is an incident.",
            "reqps",
            (f"sum by (type) (rate(mcp_gateway_audit_records_total{{{INST}}}[{RI}]))", "{{type}}"),
            (f"sum(rate(mcp_gateway_audit_write_failures_total{{{INST}}}[{RI}]))", "write failures"),
        ),
        w=8,
    )

    return {
        "title": "MCP gateway",
        "uid": "mcp-gateway",
        "description": "Calls, decisions, policy, upstreams, containment and audit of the MCP containment gateway. "
        "Metric reference: docs/metrics.md.",
        "tags": ["mcp", "mcp-gateway"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "utc",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                },
                variable("instance", "Instance", "label_values(mcp_gateway_sessions, instance)"),
                variable("team", "Team", "label_values(mcp_gateway_tool_calls_total, team)"),
                variable("agent", "Agent", 'label_values(mcp_gateway_tool_calls_total{team=~"$team"}, agent)'),
                variable("server", "Upstream", "label_values(mcp_gateway_upstream_up, server)"),
            ]
        },
        "panels": lay.panels,
    }


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
