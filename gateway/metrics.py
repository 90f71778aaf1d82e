"""Prometheus metrics with bounded label values.

Each gateway owns a registry (several can live in one process, as in tests). Agent label values are capped:
past ``max_agents`` distinct agents, new ones fold into ``other`` so a flood of JWT subjects cannot blow up a
scrape. Label children are cached so the hot path does a dict lookup, not a ``labels()`` call.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class LabelCap:
    """Admits the first ``limit`` distinct values; the rest read as ``other``."""

    def __init__(self, limit: int):
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        return "other"


class Metrics:
    def __init__(self, max_agents: int = 200, max_tools: int = 2000, max_reasons: int = 100):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.agent_label = LabelCap(max_agents)
        self.team_label = LabelCap(max_agents)
        self.tool_label = LabelCap(max_tools)
        self.reason_label = LabelCap(max_reasons)
        self.tool_calls = Counter(
            "mcp_gateway_tool_calls_total",
            "Tool calls by decision (allow, deny, error, would_deny: denied by the policy, let through in monitor "
            "mode).",
            ["server", "tool", "team", "agent", "decision"],
            registry=r,
        )
        self.requests = Counter(
            "mcp_gateway_requests_total",
            "Policy-checked MCP requests other than tools/call, by action and decision (allow, deny, error, "
            "would_deny).",
            ["action", "server", "team", "decision"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            "mcp_gateway_policy_decision_seconds",
            "Time to evaluate one policy decision.",
            buckets=_DECISION_BUCKETS,
            registry=r,
        )
        self.call_seconds = Histogram(
            "mcp_gateway_tool_call_seconds",
            "Time of an allowed tool call, gateway in to gateway out.",
            ["server"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.auth_failures = Counter(
            "mcp_gateway_auth_failures_total",
            "Requests refused before identity was established.",
            ["reason"],
            registry=r,
        )
        self.sessions = Gauge("mcp_gateway_sessions", "Open MCP sessions of agents.", registry=r)
        self.limited = Counter(
            "mcp_gateway_limited_total",
            "Requests and connections refused by a server limit (sessions_per_agent, calls_per_agent, "
            "connections, header_timeout).",
            ["limit"],
            registry=r,
        )
        self.fleet_members = Gauge(
            "mcp_gateway_fleet_members", "Live replicas in this replica's view of the fleet ([fleet]).", registry=r
        )
        self.limit_redis_errors = Counter(
            "mcp_gateway_limit_redis_errors_total",
            "Limit checks Redis could not answer, by what was done (fleet.on_redis_error): deny or local.",
            ["mode"],
            registry=r,
        )
        self.fleet_hops = Counter(
            "mcp_gateway_fleet_hops_total",
            "Requests between replicas by outcome: forwarded, received, rerouted (owner unreachable), failed, "
            "refused (a hop whose proof failed).",
            ["outcome"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "mcp_gateway_upstream_errors_total",
            "Upstream failures by kind.",
            ["server", "kind"],
            registry=r,
        )
        self.notifications_dropped = Counter(
            "mcp_gateway_notifications_dropped_total",
            "Notifications to an agent session dropped because its buffer was full (the agent did not read).",
            ["kind"],
            registry=r,
        )
        self.upstream_up = Gauge("mcp_gateway_upstream_up", "1 when the upstream is connected.", ["server"], registry=r)
        self.upstream_restarts = Counter(
            "mcp_gateway_upstream_restarts_total",
            "Upstream processes restarted after they died.",
            ["server"],
            registry=r,
        )
        self.policy_errors = Counter(
            "mcp_gateway_policy_errors_total",
            "Decisions that failed closed because the engine failed.",
            registry=r,
        )
        self.policy_revision = Info("mcp_gateway_policy_revision", "The policy revision in force.", registry=r)
        self.policy_reloads = Counter(
            "mcp_gateway_policy_reloads_total",
            "Policy reloads by result: success, unchanged, compile_error, test_failure.",
            ["result"],
            registry=r,
        )
        self.policy_bundle_info = Gauge(
            "mcp_gateway_policy_bundle_info",
            "1 for the policy revision this replica serves (a bundle's manifest revision, or a directory's digest).",
            ["revision"],
            registry=r,
        )
        self.policy_bundle_polls = Counter(
            "mcp_gateway_policy_bundle_polls_total",
            "Bundle server polls by result: activated, unchanged, refused, error.",
            ["result"],
            registry=r,
        )
        self.decision_logs_shipped = Counter(
            "mcp_gateway_decision_logs_shipped_total",
            "Audit records shipped to the decision-log sink (at least once: a retried batch counts again).",
            registry=r,
        )
        self.decision_logs_errors = Counter(
            "mcp_gateway_decision_logs_errors_total",
            "Failed uploads to the decision-log sink (each is retried with backoff; nothing is dropped).",
            registry=r,
        )
        self.identity_reloads = Counter(
            "mcp_gateway_identity_reloads_total",
            "Identity ([identity], JWKS) reloads by result: success, unchanged, refused.",
            ["result"],
            registry=r,
        )
        self.audit_failures = Counter(
            "mcp_gateway_audit_write_failures_total",
            "Audit records that could not be written (a request refused, or its result withheld).",
            registry=r,
        )
        self.denials = Counter(
            "mcp_gateway_denials_total",
            "Denied or failed decisions of recorded requests, one count per reason the policy gave.",
            ["server", "team", "reason"],
            registry=r,
        )
        self.audit_records = Counter(
            "mcp_gateway_audit_records_total",
            "Records written to the audit log, by type.",
            ["type"],
            registry=r,
        )
        self.audit_rotations = Counter(
            "mcp_gateway_audit_rotations_total",
            "Audit log files rotated by size.",
            registry=r,
        )
        # Shadow policy (gateway/policy/shadow.py): decisions compared off the call path.
        self.shadow_disagreements = Counter(
            "mcp_gateway_policy_shadow_disagreements_total",
            "Decisions where the shadow policy disagreed with the live one, by team and each one's allow|deny.",
            ["team", "live", "shadow"],
            registry=r,
        )
        self.shadow_decisions = Counter(
            "mcp_gateway_policy_shadow_decisions_total",
            "Decisions the shadow policy evaluated beside the live one.",
            registry=r,
        )
        self.shadow_dropped = Counter(
            "mcp_gateway_policy_shadow_dropped_total",
            "Decisions not evaluated by the shadow policy because its queue was full (calls never wait for it).",
            registry=r,
        )
        # Contained workers (gateway/containment): label values are upstream names, tiers and a fixed reason set.
        self.workers = Gauge("mcp_gateway_workers", "Contained workers running.", ["server", "tier"], registry=r)
        self.worker_starts = Counter(
            "mcp_gateway_worker_starts_total",
            "Contained workers started.",
            ["server", "tier"],
            registry=r,
        )
        self.worker_start_seconds = Histogram(
            "mcp_gateway_worker_start_seconds",
            "Time to start a contained worker (stdio: until it initialized).",
            ["tier"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.worker_kills = Counter(
            "mcp_gateway_worker_kills_total",
            "Contained workers stopped by a limit (timeout, memory, pids, cpu, output) or that crashed.",
            ["server", "reason"],
            registry=r,
        )
        self.egress_denied = Counter(
            "mcp_gateway_egress_denied_total",
            "Connections the egress proxy refused.",
            ["server"],
            registry=r,
        )
        self.tool_drift = Counter(
            "mcp_gateway_tool_drift_total",
            "Listed items found drifted from the tool lock, by drift (changed, unlocked, shadow, removed).",
            ["server", "kind"],
            registry=r,
        )
        self.tool_drift_items = Gauge(
            "mcp_gateway_tool_drift_items",
            "Items of an upstream drifted from the tool lock now.",
            ["server"],
            registry=r,
        )
        self.secret_findings = Counter(
            "mcp_gateway_secret_findings_total",
            "Secrets found by the scanner (gateway/secrets), by detector kind and where: arguments or result.",
            ["server", "kind", "where"],
            registry=r,
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def count_call(self, server: str, tool: str, team: str, agent: str, decision: str) -> None:
        tool = tool if self.tool_label(f"{server}/{tool}") != "other" else "other"
        key = ("c", server, tool, self.team_label(team), self.agent_label(agent), decision)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.tool_calls.labels(*key[1:])
        child.inc()

    def count_request(self, action: str, server: str, team: str, decision: str) -> None:
        key = ("r", action, server, self.team_label(team), decision)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(*key[1:])
        child.inc()

    def observe_call(self, server: str, seconds: float) -> None:
        key = ("s", server)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.call_seconds.labels(server)
        child.observe(seconds)

    def count_denial(self, server: str, team: str, reasons: tuple[str, ...] | list[str]) -> None:
        """Count a denial under each of its reasons; reasons are capped like agents (policies may interpolate)."""
        team = self.team_label(team)
        for reason in reasons or ("no reason given",):
            key = ("d", server, team, self.reason_label(reason[:200]))
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.denials.labels(*key[1:])
            child.inc()

    def count_shadow_disagreement(self, team: str, live: bool, shadow: bool) -> None:
        key = ("sd", self.team_label(team), "allow" if live else "deny", "allow" if shadow else "deny")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.shadow_disagreements.labels(*key[1:])
        child.inc()

    def count_audit(self, record_type: str) -> None:
        key = ("a", record_type)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.audit_records.labels(record_type)
        child.inc()

    def count_secret(self, server: str, kind: str, where: str) -> None:
        key = ("x", server, kind, where)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.secret_findings.labels(*key[1:])
        child.inc()
