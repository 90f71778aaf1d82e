"""Live reload: a gateway watches its policy directory (and reloads on SIGHUP); a new revision goes live only if it
compiles and passes its table tests, otherwise it is refused with the reason and the old revision keeps serving."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest

from gateway.policy.loader import load_policy
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

pytestmark = pytest.mark.anyio
OLD_REASON = "destructive tools need the admin role"
NEW_REASON = "destructive tools need the admin role (ask #platform-oncall)"


def _gateway(tmp_path: Path, watch: bool) -> tuple[RunningGateway, Path]:
    policy = tmp_path / "policy"
    shutil.copytree(REPO / "rego", policy)
    port = free_port()
    extra = f"watch = {str(watch).lower()}\nwatch_interval_s = 0.2\n"
    config = default_config(port, tmp_path, stdio_upstream("echo", ECHO), policy=policy)
    config = config.replace(f'path = "{policy}"\n', f'path = "{policy}"\n{extra}', 1)
    return start_gateway(tmp_path, config, port), policy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def _new_reason(policy: Path) -> None:
    """A change that keeps the tables true: the rule and its test cases change together."""
    _edit(policy / "teams" / "platform.rego", f'"{OLD_REASON}"', f'"{NEW_REASON}"')
    _edit(policy / "teams" / "platform_test.yaml", f"[{OLD_REASON}]", f'["{NEW_REASON}"]')
    _edit(policy / "gateway_test.yaml", f'"{OLD_REASON}"]', f'"{NEW_REASON}"]')
    _edit(policy / "teams" / "platform_test.rego", f'"{OLD_REASON}"', f'"{NEW_REASON}"')


def _metric(gw: RunningGateway, pattern: str) -> float:
    m = re.search(pattern + r" ([0-9.e+]+)$", httpx2.get(gw.admin_base + "/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


def _wait(cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def _revision(gw: RunningGateway) -> str:
    return str(httpx2.get(gw.admin_base + "/readyz").json()["policy_revision"])


async def _denial(gw: RunningGateway) -> str:
    async with mcp_client(gw.url, KEYS["ci-bot"][2]) as c:
        result = await c.call_tool("echo__delete_everything", {})
    assert result.is_error
    return str(result.content[0].text)  # type: ignore[union-attr]


async def test_a_good_change_goes_live_and_broken_ones_are_refused(tmp_path: Path) -> None:
    gw, policy = _gateway(tmp_path, watch=True)
    try:
        first = _revision(gw)
        assert first == load_policy(policy).revision
        assert OLD_REASON in await _denial(gw)

        _new_reason(policy)
        _wait(lambda: _revision(gw) != first, "the new revision")
        second = _revision(gw)
        assert second == load_policy(policy).revision
        assert NEW_REASON in await _denial(gw)
        assert _metric(gw, r'mcp_gateway_policy_reloads_total\{result="success"\}') == 1
        assert _metric(gw, rf'mcp_gateway_policy_revision_info\{{revision="{second}"\}}') == 1

        # A syntax error: refused, logged with file and line, the second revision keeps serving.
        good = (policy / "teams" / "platform.rego").read_text()
        (policy / "teams" / "platform.rego").write_text(good + "\ndeny contains msg if {\n")
        _wait(
            lambda: _metric(gw, r'mcp_gateway_policy_reloads_total\{result="compile_error"\}') >= 1,
            "the compile error to be counted",
        )
        assert _revision(gw) == second
        assert NEW_REASON in await _denial(gw)
        assert "policy reload (files changed) refused, revision " + second in gw.log.read_text()
        assert str(policy / "teams" / "platform.rego") + ":" in gw.log.read_text()

        # A built-in the embedded engine lacks: refused at load, not at the first call that needs it.
        (policy / "teams" / "platform.rego").write_text(
            good + '\ndeny contains "internal network" if net.cidr_contains("10.0.0.0/8", input.request.remote_addr)\n'
        )
        _wait(
            lambda: _metric(gw, r'mcp_gateway_policy_reloads_total\{result="compile_error"\}') >= 2,
            "the lint error to be counted",
        )
        assert "net.cidr_contains is not a built-in the embedded engine supports" in gw.log.read_text()

        # A policy rego-cpp would abort the process on: refused; the gateway is still there.
        (policy / "teams" / "platform.rego").write_text(good + "\nf(a) := 1 if a\n\nf(a, b) := 2 if a\n")
        _wait(
            lambda: _metric(gw, r'mcp_gateway_policy_reloads_total\{result="compile_error"\}') >= 3,
            "the arity error to be counted",
        )
        assert gw.proc.poll() is None and _revision(gw) == second

        # A rule change its tables contradict: compiles, fails its tests, refused.
        broken = good.replace("destructiveHint == true\n\tnot is_admin", "destructiveHint == true", 1)
        assert broken != good
        (policy / "teams" / "platform.rego").write_text(broken)
        _wait(
            lambda: _metric(gw, r'mcp_gateway_policy_reloads_total\{result="test_failure"\}') >= 1,
            "the test failure to be counted",
        )
        assert _revision(gw) == second
        assert "FAIL " in gw.log.read_text() and "admin may run destructive tools" in gw.log.read_text()
        async with mcp_client(gw.url, KEYS["admin"][2]) as c:
            assert not (await c.call_tool("echo__delete_everything", {})).is_error  # still the second revision

        # Fixed again: goes live.
        (policy / "teams" / "platform.rego").write_text(good.replace(NEW_REASON, NEW_REASON + "!"))
        _edit(policy / "teams" / "platform_test.yaml", NEW_REASON, NEW_REASON + "!")
        _edit(policy / "gateway_test.yaml", NEW_REASON, NEW_REASON + "!")
        _edit(policy / "teams" / "platform_test.rego", NEW_REASON, NEW_REASON + "!")
        _wait(lambda: _revision(gw) not in (first, second), "the fixed revision")
        assert NEW_REASON + "!" in await _denial(gw)
    finally:
        gw.stop()
    revisions = [
        r["bundles"]["gateway"]["revision"]
        for r in gw.audit_records()
        if r["type"] == "decision" and r["action"] == "tools/call"
    ]
    assert revisions[0] == first and second in revisions and revisions[-1] not in (first, second)


async def test_sighup_reloads_when_watching_is_off(tmp_path: Path) -> None:
    gw, policy = _gateway(tmp_path, watch=False)
    try:
        first = _revision(gw)
        _new_reason(policy)
        os.kill(gw.proc.pid, signal.SIGHUP)
        _wait(lambda: _revision(gw) != first, "the revision after SIGHUP")
        assert NEW_REASON in await _denial(gw)
        assert "policy reload (SIGHUP): revision" in gw.log.read_text()
        os.kill(gw.proc.pid, signal.SIGHUP)  # nothing changed: counted as unchanged, still serving
        _wait(lambda: _metric(gw, r'mcp_gateway_policy_reloads_total\{result="unchanged"\}') >= 1, "unchanged")
        assert gw.proc.poll() is None
    finally:
        gw.stop()


def test_a_change_written_while_the_candidate_is_checked_is_not_compiled_unchecked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child process checks the candidate; a deploy writes again meanwhile: what goes live is what was checked
    (the later version waits for the next reload, which checks it too)."""
    from gateway.policy import reload

    policy = tmp_path / "policy"
    shutil.copytree(REPO / "rego", policy)
    checked = load_policy(policy).revision
    child = reload.preflight

    def preflight_during_a_deploy(path: Path, decision: str, engine: str = "embedded") -> reload.ReloadResult | None:
        failure = child(path, decision, engine)
        _new_reason(policy)
        return failure

    monkeypatch.setattr(reload, "preflight", preflight_during_a_deploy)
    compiled, failure = reload.prepare(policy, "gateway/decision")
    assert failure is None and compiled is not None
    assert compiled.revision == checked != load_policy(policy).revision
    assert compiled.source.root == policy


async def test_a_refused_reload_logs_every_failing_case_first_ones_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log once kept the last 60 lines of the test output: with many failing cases (each with its diff) the
    first ones, the ones to fix first, were dropped."""
    import logging

    from gateway.config import PolicyConfig
    from gateway.metrics import Metrics
    from gateway.policy.embedded import EmbeddedEngine
    from gateway.policy.reload import PolicyWatcher

    policy = tmp_path / "policy"
    shutil.copytree(REPO / "rego", policy)
    engine = EmbeddedEngine(policy, "gateway/decision", 1000, threads=1)
    watcher = PolicyWatcher(engine, Metrics(), PolicyConfig(path=str(policy)))
    cases = "".join(
        f"  - name: wrong case {i:02d}\n"
        f"    input: {{agent: {{id: c, team: platform, roles: [ci]}}, server: time, tool: get_current_time}}\n"
        f"    reasons: [reason {i}]\n"
        for i in range(80)
    )
    (policy / "many_test.yaml").write_text("defaults: {action: tools/call}\ncases:\n" + cases)
    with caplog.at_level(logging.ERROR, logger="gateway.policy"):
        result = await watcher.reload("test")
    assert result.result == "test_failure"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for i in range(80):
        assert f"FAIL {policy}/many_test.yaml: wrong case {i:02d}: reasons differ" in logged, i
    assert logged.index("wrong case 00") < logged.index("wrong case 79")
    assert re.search(r"\d+ passed, 80 failed", logged)
