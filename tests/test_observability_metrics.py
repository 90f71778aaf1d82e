"""Metrics as SREs consume them: a real Prometheus scrapes a real gateway; series, counts, dashboard queries,
template variables and alert rules are checked through Prometheus' own HTTP API. Label cardinality is capped.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from mcp.shared.exceptions import MCPError
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    ECHO,
    KEYS,
    REPO,
    RunningGateway,
    default_config,
    free_port,
    mcp_client,
    start_gateway,
    stdio_upstream,
)

DASHBOARD = REPO / "deploy" / "grafana" / "mcp-gateway.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "alerts_test.yml"

# Metrics of contained workers and the egress proxy. The main scenario runs no contained upstream, so their
# panels have no series there; test_containment_panels_return_data checks them against one that does.
CONTAINMENT_METRICS = {
    "mcp_gateway_workers",
    "mcp_gateway_worker_kills_total",
    "mcp_gateway_worker_starts_total",
    "mcp_gateway_worker_start_seconds_bucket",
    "mcp_gateway_egress_denied_total",
}
# The rollout row (monitor mode, shadow policy): tests/test_rollout_dashboard.py checks it against a gateway that
# monitors a team and runs a shadow policy.
ROLLOUT_METRICS = {"mcp_gateway_policy_shadow_disagreements_total"}


def rollout_query(expr: str) -> bool:
    return 'decision="would_deny"' in expr or bool(metric_names(expr) & ROLLOUT_METRICS)


# A policy of this test's own, so the deny reasons counted do not depend on the shipped team policies.
POLICY = """package gateway

import rego.v1

default decision := {"allow": false, "reasons": ["no rule allows this request"]}

decision := {"allow": true, "reasons": []} if listing

decision := {"allow": true, "reasons": []} if {
	not listing
	input.agent.team in {"platform", "team0", "team1", "team2", "team3", "team4"}
	not destructive_denied
	not refused_text
}

decision := {"allow": false, "reasons": ["destructive tools need the admin role"]} if {
	not listing
	destructive_denied
}

decision := {"allow": false, "reasons": [sprintf("text %v is refused", [input.arguments.text])]} if {
	not listing
	not destructive_denied
	refused_text
}

listing if {
	input.action in {"tools/list", "prompts/list", "resources/list"}
	input.tool == null
	input.prompt == null
	input.resource == null
}

destructive_denied if {
	input.action == "tools/call"
	input.annotations.destructiveHint == true
	not "admin" in input.agent.roles
}

refused_text if {
	input.action == "tools/call"
	startswith(input.arguments.text, "refuse")
}
"""


def write_policy(workdir: Path) -> Path:
    policy = workdir / "policy"
    policy.mkdir(parents=True, exist_ok=True)
    (policy / "gateway.rego").write_text(POLICY)
    return policy


# --- a real Prometheus -----------------------------------------------------------------------------------------


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx2.get(self.base + "/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"query failed: {expr}\n{body.get('errorType')}: {body.get('error')}")
        assert body["data"]["resultType"] == "vector", (expr, body["data"]["resultType"])
        return list(body["data"]["result"])

    def values(self, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
        return {tuple(s["metric"].get(k, "") for k in labels): float(s["value"][1]) for s in self.query(expr)}

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for_scrape_after(self, moment: float, timeout: float = 30) -> None:
        """Block until Prometheus holds a scrape of the gateway taken after ``moment`` (a unix time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ts = self.scalar('timestamp(up{job="mcp-gateway"})')
            if ts is not None and ts > moment:
                return
            time.sleep(0.2)
        raise AssertionError(f"no scrape of the gateway after {moment} in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_prometheus(workdir: Path, target_port: int) -> Prometheus:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus binary is missing: scripts/setup.sh --test installs the Debian package")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        f"""global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files:
  - {ALERTS}
scrape_configs:
  - job_name: mcp-gateway
    static_configs:
      - targets: ["127.0.0.1:{target_port}"]
"""
    )
    port = free_port()
    log = workdir / "prometheus.log"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    prom = Prometheus(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx2.get(prom.base + "/-/ready", timeout=1).status_code == 200:
                return prom
        except httpx2.HTTPError:
            pass
        time.sleep(0.1)
    prom.stop()
    raise RuntimeError(f"prometheus not ready:\n{log.read_text()}")


# --- the scenario: a known set of calls, made in two phases so every rate has an increase to show -------------


CI, ADMIN, RESEARCHER = KEYS["ci-bot"][2], KEYS["admin"][2], KEYS["researcher"][2]


async def _call(url: str, key: str, tool: str, args: dict[str, Any], times: int = 1) -> None:
    async with mcp_client(url, key) as c:
        await c.list_tools()
        for _ in range(times):
            try:
                await c.call_tool(tool, args)
            except MCPError:
                pass  # unknown or hidden tools are protocol errors; they are still decided, counted and recorded


async def _bad_key(url: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the SDK client surfaces the 401 in its own way
        async with mcp_client(url, "not-a-key") as c:
            await c.list_tools()


async def phase_one(url: str) -> None:
    await _call(url, CI, "echo__echo", {"text": "a"})
    await _call(url, ADMIN, "echo__echo", {"text": "b"})
    await _call(url, ADMIN, "echo__delete_everything", {"path": "/tmp/x"})
    await _call(url, CI, "echo__delete_everything", {"path": "/tmp/x"})
    await _call(url, RESEARCHER, "echo__echo", {"text": "c"})
    await _call(url, CI, "echo__nope", {})
    await _bad_key(url)


async def phase_two(url: str) -> None:
    await _call(url, CI, "echo__echo", {"text": "d"}, times=2)
    await _call(url, ADMIN, "echo__echo", {"text": "e"})
    await _call(url, CI, "echo__delete_everything", {"path": "/tmp/y"})
    await _bad_key(url)
    await _call(url, CI, "echo__crash", {})  # allowed; the upstream dies mid-call: an upstream error


EXPECTED_CALLS = {
    # (server, tool, team, agent, decision): count
    ("echo", "echo", "platform", "ci-bot", "allow"): 3,
    ("echo", "echo", "platform", "admin", "allow"): 2,
    ("echo", "delete_everything", "platform", "admin", "allow"): 1,
    ("echo", "delete_everything", "platform", "ci-bot", "deny"): 2,
    ("echo", "echo", "research", "researcher", "deny"): 1,
    ("echo", "unknown", "platform", "ci-bot", "deny"): 1,
    ("echo", "crash", "platform", "ci-bot", "allow"): 1,
}
EXPECTED_DENIALS = {
    ("echo", "platform", "destructive tools need the admin role"): 2,
    ("echo", "research", "no rule allows this request"): 1,
    ("echo", "platform", "unknown tool"): 1,
}


@dataclass
class Stack:
    gw: RunningGateway
    prom: Prometheus


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("obs")
    port = free_port()
    config = default_config(port, workdir, stdio_upstream("echo", ECHO), policy=write_policy(workdir))
    gw = start_gateway(workdir, config, port)
    prom = None
    try:
        prom = start_prometheus(workdir / "prometheus", gw.admin_port)
        prom.wait_for_scrape_after(time.time())
        anyio.run(phase_one, gw.url)
        revise_policy(gw)
        prom.wait_for_scrape_after(time.time())
        anyio.run(phase_two, gw.url)
        wait_restarted(gw)
        prom.wait_for_scrape_after(time.time())
        yield Stack(gw, prom)
    finally:
        if prom is not None:
            prom.stop()
        gw.stop()


def revise_policy(gw: RunningGateway, timeout: float = 30) -> None:
    """A new policy revision (a comment more), swapped in live on SIGHUP: one successful reload."""
    rego = gw.workdir / "policy" / "gateway.rego"
    rego.write_text(POLICY + "\n# revised\n")
    os.kill(gw.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if 'mcp_gateway_policy_reloads_total{result="success"} 1.0' in httpx2.get(gw.admin_base + "/metrics").text:
            return
        time.sleep(0.1)
    raise AssertionError(f"the policy was not reloaded:\n{gw.log.read_text()[-3000:]}")


def wait_restarted(gw: RunningGateway, timeout: float = 30) -> None:
    """The crashed upstream is restarted by the gateway; wait until it is counted down once and up again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx2.get(gw.admin_base + "/metrics", timeout=2).text
        if (
            'mcp_gateway_upstream_restarts_total{server="echo"} 1.0' in text
            and 'mcp_gateway_upstream_up{server="echo"} 1.0' in text
        ):
            return
        time.sleep(0.1)
    raise AssertionError("the crashed upstream was not restarted")


JOB = '{job="mcp-gateway"}'


def test_series_and_counts_match_the_calls_made(stack: Stack) -> None:
    prom = stack.prom
    calls = prom.values(f"mcp_gateway_tool_calls_total{JOB}", "server", "tool", "team", "agent", "decision")
    assert calls == EXPECTED_CALLS
    denials = prom.values(f"mcp_gateway_denials_total{JOB}", "server", "team", "reason")
    assert denials == EXPECTED_DENIALS
    assert prom.values(f"mcp_gateway_auth_failures_total{JOB}", "reason") == {("bad_key",): 2}
    # Every allowed call that reached the upstream was timed, the crashed one included.
    assert prom.values(f"mcp_gateway_tool_call_seconds_count{JOB}", "server") == {("echo",): 7}
    errors = prom.values(f"mcp_gateway_upstream_errors_total{JOB}", "server", "kind")
    assert {k[0] for k in errors} == {"echo"} and sum(errors.values()) == 1, errors
    assert prom.values(f"mcp_gateway_upstream_restarts_total{JOB}", "server") == {("echo",): 1}
    assert prom.values(f"mcp_gateway_upstream_up{JOB}", "server") == {("echo",): 1}
    assert prom.scalar(f"mcp_gateway_policy_errors_total{JOB}") == 0
    assert prom.values(f"mcp_gateway_policy_reloads_total{JOB}", "result") == {("success",): 1}
    revisions = {r["bundles"]["gateway"]["revision"] for r in stack.gw.audit_records() if r["type"] == "decision"}
    assert len(revisions) == 2
    assert {k[0] for k in prom.values(f"mcp_gateway_policy_revision_info{JOB}", "revision")} < revisions
    assert prom.scalar(f"mcp_gateway_audit_write_failures_total{JOB}") == 0
    # Lists are policy-checked requests too; the lists this scenario made were all allowed.
    requests = prom.values(f"mcp_gateway_requests_total{JOB}", "action", "decision")
    assert requests and {k[1] for k in requests} == {"allow"}, requests
    # The audit counters agree with the audit file, record for record.
    records = stack.gw.audit_records()
    by_type: dict[str, int] = {}
    for rec in records:
        by_type[rec["type"]] = by_type.get(rec["type"], 0) + 1
    assert prom.values(f"mcp_gateway_audit_records_total{JOB}", "type") == {(t,): n for t, n in by_type.items()}
    tool_decisions = [r for r in records if r["type"] == "decision" and r["action"] == "tools/call"]
    assert len(tool_decisions) == sum(EXPECTED_CALLS.values())


GRAFANA_VARS = {
    "$__rate_interval": "2m",
    "$__interval": "15s",
    "$__range": "10m",
    "$instance": ".*",
    "$team": ".*",
    "$agent": ".*",
    "$server": ".*",
}


def substitute(expr: str) -> str:
    # Longest names first, so $__rate_interval is not read as $__range.
    for name in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARS[name])
    assert "$" not in expr, f"an unknown dashboard variable is left in: {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(mcp_gateway_[a-z_]+)", expr))


def dashboard_targets() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((f"{panel['title']} [{target['refId']}]", target["expr"]))
    return out


def test_dashboard_is_grafana_json_with_every_required_panel() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "mcp-gateway" and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dash["panels"]:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
    exprs = " ".join(e for _, e in dashboard_targets())
    for metric in (
        "mcp_gateway_tool_calls_total",
        "mcp_gateway_denials_total",
        "mcp_gateway_policy_decision_seconds_bucket",
        "mcp_gateway_tool_call_seconds_bucket",
        "mcp_gateway_upstream_errors_total",
        "mcp_gateway_sessions",
        "mcp_gateway_workers",
        "mcp_gateway_worker_kills_total",
        "mcp_gateway_egress_denied_total",
        "mcp_gateway_auth_failures_total",
        "mcp_gateway_policy_errors_total",
        "mcp_gateway_upstream_up",
        "mcp_gateway_policy_reloads_total",
        "mcp_gateway_policy_shadow_disagreements_total",
        'decision="would_deny"',
    ):
        assert metric in exprs, f"no panel shows {metric}"
    # The generator and the committed JSON agree (edit scripts/gen_dashboard.py, then run it).
    out = subprocess.run(
        [
            "python3",
            "-c",
            "import json,sys; sys.path.insert(0, 'scripts'); import gen_dashboard as g; "
            "print(json.dumps(g.build(), indent=2))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == dash, "deploy/grafana/mcp-gateway.json is stale: run scripts/gen_dashboard.py"


def test_every_dashboard_query_runs_and_returns_data(stack: Stack) -> None:
    prom = stack.prom
    exposed = set(httpx2.get(prom.base + "/api/v1/label/__name__/values", timeout=10).json()["data"])
    empty = []
    targets = dashboard_targets()
    assert len(targets) >= 20
    for title, expr in targets:
        result = prom.query(substitute(expr))  # raises on a query Prometheus rejects, skipped or not
        values = [float(s["value"][1]) for s in result]
        if values and not all(math.isnan(v) for v in values):
            continue
        missing = {m for m in metric_names(expr) if m not in exposed}
        if missing and missing <= CONTAINMENT_METRICS:
            continue  # the containment row: test_containment_panels_return_data
        if rollout_query(expr):
            continue  # the rollout row: tests/test_rollout_dashboard.py
        empty.append(f"{title}: {expr} -> {result}")
    assert not empty, "dashboard queries that returned nothing:\n" + "\n".join(empty)


CONTAINMENT = """
[[upstreams]]
name = "sh"
transport = "builtin"
tools = "shell"
containment = "tight"

[[upstreams]]
name = "net"
transport = "builtin"
tools = "shell"
containment = "listed"
"""


def containment_extra(work: Path) -> str:
    common = (
        'tier = "sandbox"\nread_only = ["/usr", "/etc/ssl"]\nread_write = ["{workspace}"]\n'
        'env = { PATH = "/usr/bin:/bin" }\ntimeout_s = 1\n'
    )
    return (
        f'[containment]\nworkspace_root = "{work}/workspaces"\nuid_base = 320000\nuid_count = 10\n'
        f"[containment.profiles.tight]\n{common}\n"
        f'[containment.profiles.listed]\n{common}network = "allowlist"\nallow_hosts = ["allowed.invalid:443"]\n'
    )


async def contained_calls(url: str) -> None:
    """A worker start and stop, a kill (the time limit) and an egress refusal."""
    async with mcp_client(url, ADMIN) as c:
        assert not (await c.call_tool("sh__run", {"command": "true"})).is_error
        assert "time limit reached" in str((await c.call_tool("sh__run", {"command": "sleep 30"})).content)
        refused = await c.call_tool("net__run", {"command": "curl -sS -m 5 https://refused.invalid/"})
        assert "403" in str(refused.structured_content)


def test_containment_panels_return_data() -> None:
    """The dashboard's containment row against a gateway that runs contained workers, in two phases (rates)."""
    work = Path(tempfile.mkdtemp(prefix="obs-containment.", dir="/tmp"))
    os.chmod(work, 0o711)  # worker uids walk down to their workspaces
    port = free_port()
    config = default_config(
        port, work, CONTAINMENT, extra=containment_extra(work), policy=REPO / "tests" / "containment_policy"
    )
    gw = start_gateway(work, config, port)
    prom = None
    try:
        prom = start_prometheus(work / "prometheus", gw.admin_port)
        prom.wait_for_scrape_after(time.time())
        for _ in range(2):
            anyio.run(contained_calls, gw.url)
            prom.wait_for_scrape_after(time.time())
        checked = 0
        for title, expr in dashboard_targets():
            if metric_names(expr) & CONTAINMENT_METRICS:
                values = [float(s["value"][1]) for s in prom.query(substitute(expr))]
                assert values and not all(math.isnan(v) for v in values), f"{title}: {expr} returned nothing"
                checked += 1
        assert checked >= 5
        assert prom.values(f"mcp_gateway_worker_kills_total{JOB}", "server", "reason") == {("sh", "timeout"): 2}
        assert prom.values(f"mcp_gateway_egress_denied_total{JOB}", "server") == {("net",): 2}
        assert prom.values(f"mcp_gateway_worker_starts_total{JOB}", "server", "tier") == {
            ("sh", "sandbox"): 4,
            ("net", "sandbox"): 2,
        }
        assert prom.values(f"mcp_gateway_workers{JOB}", "server") == {("sh",): 0, ("net",): 0}
    finally:
        if prom is not None:
            prom.stop()
        gw.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_dashboard_variables_have_values(stack: Stack) -> None:
    dash = json.loads(DASHBOARD.read_text())
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
        assert m, var["definition"]
        selector, label = substitute(m.group(1)), m.group(2)
        r = httpx2.get(f"{stack.prom.base}/api/v1/label/{label}/values", params={"match[]": selector}, timeout=10)
        assert r.json()["status"] == "success", r.text
        assert r.json()["data"], f"variable {var['name']} has no values ({var['definition']})"


def test_alert_rules_load_and_evaluate_in_prometheus(stack: Stack) -> None:
    deadline = time.monotonic() + 20
    while True:
        groups = httpx2.get(stack.prom.base + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if (rules and all(r.get("health") == "ok" for r in rules)) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    names = {r["name"] for r in rules}
    assert {
        "McpGatewayDenySpike",
        "McpGatewayPolicyErrors",
        "McpGatewayPolicyEngineUnavailable",
        "McpGatewayWorkerKillStorm",
        "McpGatewayAuthFailureBurst",
        "McpGatewayUpstreamDown",
    } <= names
    assert [r["name"] for r in rules if r.get("health") != "ok"] == []
    # The healthy gateway of this scenario is down for none of them (the crash was restarted within `for`).
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    assert "McpGatewayDown" not in firing and "McpGatewayUpstreamDown" not in firing


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/setup.sh --test installs the Debian package prometheus")
    check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    unit = subprocess.run(
        [promtool, "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True, cwd=ALERT_TESTS.parent
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


# --- label cardinality --------------------------------------------------------------------------------------------


SECRET_ENV = "OBS_TEST_JWT_SECRET"
SECRET = "observability-test-secret-0123456789abcdef"


def token(sub: str, team: str) -> str:
    claims = {
        "iss": "https://idp.test",
        "aud": "mcp-gateway",
        "sub": sub,
        "team": team,
        "roles": ["ci"],
        "exp": int(time.time()) + 600,
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


def families(gw: RunningGateway) -> dict[str, list[Any]]:
    text = httpx2.get(gw.admin_base + "/metrics", timeout=5).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_labels_beyond_the_caps_fold_into_other(tmp_path: Path) -> None:
    """Five JWT subjects in five teams, and five distinct deny reasons, against caps of two."""
    port = free_port()
    extra = f"""
[identity.jwt]
issuer = "https://idp.test"
audience = "mcp-gateway"
hs256_secret_env = "{SECRET_ENV}"

[metrics]
max_agents = 2
max_reasons = 2
"""
    config = default_config(port, tmp_path, stdio_upstream("echo", ECHO), extra=extra, policy=write_policy(tmp_path))
    gw = start_gateway(tmp_path, config, port, env={SECRET_ENV: SECRET})
    try:

        async def scenario() -> None:
            for i in range(5):
                async with mcp_client(gw.url, token(f"agent-{i}", f"team{i}")) as c:
                    assert not (await c.call_tool("echo__echo", {"text": "hello"})).is_error
            async with mcp_client(gw.url, token("agent-0", "team0")) as c:
                for i in range(5):
                    assert (await c.call_tool("echo__echo", {"text": f"refuse-{i}"})).is_error

        anyio.run(scenario)
        samples = families(gw)
    finally:
        gw.stop()
    calls = {
        (s.labels["agent"], s.labels["team"], s.labels["decision"]): s.value
        for s in samples["mcp_gateway_tool_calls"]
        if s.name.endswith("_total")
    }
    assert calls == {
        ("agent-0", "team0", "allow"): 1,
        ("agent-1", "team1", "allow"): 1,
        ("other", "other", "allow"): 3,
        ("agent-0", "team0", "deny"): 5,
    }
    reasons = {s.labels["reason"]: s.value for s in samples["mcp_gateway_denials"] if s.name.endswith("_total")}
    assert reasons == {"text refuse-0 is refused": 1, "text refuse-1 is refused": 1, "other": 3}
    # The audit log keeps what the metrics fold: every agent and reason by name.
    records = [r for r in gw.audit_records() if r["type"] == "decision" and r["action"] == "tools/call"]
    assert {r["agent"] for r in records} == {f"agent-{i}" for i in range(5)}
    assert len({tuple(r["reasons"]) for r in records if not r["allow"]}) == 5
