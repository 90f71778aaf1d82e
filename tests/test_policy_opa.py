"""engine = "opa": decisions from an OPA server over its REST Data API, failing closed on every error.

No OPA binary can be installed on this machine (no package registry reachable from here ships one, and the Go
toolchain available is too old to build it). These tests therefore run the gateway's OPA engine against
conformance/policy/opa_standin.py, a small server of ours that speaks OPA's Data API and evaluates the policy
with rego-cpp or, when the opa-golib-python-bindings package is installed, with OPA's own Go evaluator. A parity
test against a real OPA runs when OPA_URL is set or `opa` is on PATH, and is skipped (with that reason) otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from gateway.config import PolicyConfig
from gateway.policy import PolicyError
from gateway.policy.embedded import compile_policy, new_evaluator
from gateway.policy.loader import load_policy
from gateway.policy.opa import OpaEngine
from gateway.policy.tables import complete_input, load_tables, report, run_cases_async
from tests.conftest import ECHO, KEYS, REPO, default_config, free_port, mcp_client, start_gateway, stdio_upstream

pytestmark = pytest.mark.anyio
STANDIN = REPO / "conformance" / "policy" / "opa_standin.py"
SHIPPED = REPO / "rego"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
CI_CALL = complete_input(
    {
        "agent": {"id": "ci-bot", "team": "platform", "roles": ["ci"]},
        "server": "echo",
        "tool": "echo",
        "arguments": {"text": "hi"},
    }
)


@dataclass
class Standin:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    @contextmanager
    def fault(self, mode: str, delay_ms: int = 0) -> Iterator[None]:
        httpx2.put(self.url + "/_standin/fault", json={"mode": mode, "delay_ms": delay_ms}).raise_for_status()
        try:
            yield
        finally:
            httpx2.put(self.url + "/_standin/fault", json={"mode": "none"}).raise_for_status()


def start_standin(*extra: str, policy: Path = SHIPPED) -> Standin:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(STANDIN), "--policy", str(policy), "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stand-in exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code in (200, 401):
                return Standin(proc, port)
        except httpx2.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("stand-in did not start")


@pytest.fixture(scope="module")
def standin() -> Iterator[Standin]:
    s = start_standin()
    yield s
    s.stop()


def engine(url: str, timeout_ms: int = 1000, **kw: object) -> OpaEngine:
    return OpaEngine(PolicyConfig(engine="opa", opa_url=url, timeout_ms=timeout_ms, **kw))  # type: ignore[arg-type]


async def test_decisions_come_from_opa_with_its_decision_id_and_revision(standin: Standin) -> None:
    e = engine(standin.url)
    try:
        assert e.revision == "opa"  # not known until OPA has answered
        d = await e.decide(CI_CALL)
        assert d.allow and d.error is None and d.reasons == ()
        assert d.engine_decision_id and UUID.match(d.engine_decision_id)
        assert d.revision == e.revision == load_policy(SHIPPED).revision  # from ?provenance
        denied = await e.decide({**CI_CALL, "tool": "delete_everything", "annotations": {"destructiveHint": True}})
        assert not denied.allow and denied.reasons == ("destructive tools need the admin role",)
        assert denied.engine_decision_id not in (None, d.engine_decision_id)
    finally:
        await e.aclose()


async def test_the_shipped_tables_pass_through_the_opa_engine(standin: Standin) -> None:
    e = engine(standin.url)
    try:
        results = await run_cases_async(load_tables(load_policy(SHIPPED)), e.decide)
    finally:
        await e.aclose()
    lines, failed = report(results, verbose=False)
    assert failed == 0, "\n".join(lines)


async def test_connection_refused_denies() -> None:
    e = engine(f"http://127.0.0.1:{free_port()}")
    try:
        d = await e.decide(CI_CALL)
    finally:
        await e.aclose()
    assert not d.allow and d.error and "OPA unreachable" in d.error
    assert d.reasons == ("policy evaluation failed",)


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("status500", "OPA answered HTTP 500"),
        ("undefined", "the decision is undefined in OPA"),
        ("garbage", "OPA answer unusable"),
    ],
)
async def test_opa_failures_deny_and_the_engine_recovers(standin: Standin, mode: str, error: str) -> None:
    e = engine(standin.url)
    try:
        with standin.fault(mode):
            d = await e.decide(CI_CALL)
        assert not d.allow and d.error and error in d.error, d
        if mode == "undefined":
            assert d.engine_decision_id and UUID.match(d.engine_decision_id)  # OPA logged it: keep the join key
        assert (await e.decide(CI_CALL)).allow  # the pooled connection is still good afterwards
    finally:
        await e.aclose()


async def test_odd_metadata_around_a_good_result_is_ignored(standin: Standin) -> None:
    """A provenance or decision id not shaped as OPA's: the decision stands, without a revision or id from it."""
    e = engine(standin.url)
    try:
        first = await e.decide(CI_CALL)
        with standin.fault("odd-metadata"):
            d = await e.decide(CI_CALL)
    finally:
        await e.aclose()
    assert d.allow and d.error is None and d.engine_decision_id is None
    assert d.revision == first.revision == load_policy(SHIPPED).revision  # the last revision OPA did report


async def test_a_slow_opa_times_out_and_denies(standin: Standin) -> None:
    e = engine(standin.url, timeout_ms=200)
    try:
        with standin.fault("slow", delay_ms=3000):
            d = await e.decide(CI_CALL)
        assert not d.allow and d.error == "OPA did not answer within 200 ms"
        assert (await e.decide(CI_CALL)).allow
    finally:
        await e.aclose()


async def test_a_result_that_is_not_a_decision_denies(standin: Standin) -> None:
    e = engine(standin.url, decision="teams")  # data.teams: an object, but not {allow, reasons}
    try:
        d = await e.decide(CI_CALL)
    finally:
        await e.aclose()
    assert not d.allow and d.error == "policy decision has no boolean 'allow'"


async def test_bearer_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = start_standin("--token", "s3cret-token")
    try:
        anonymous = engine(s.url)
        try:
            d = await anonymous.decide(CI_CALL)
            assert not d.allow and d.error and "HTTP 401" in d.error
        finally:
            await anonymous.aclose()
        monkeypatch.setenv("OPA_TEST_TOKEN", "s3cret-token")
        authed = engine(s.url, opa_token_env="OPA_TEST_TOKEN")
        try:
            assert (await authed.decide(CI_CALL)).allow
        finally:
            await authed.aclose()
        monkeypatch.delenv("OPA_TEST_TOKEN")
        with pytest.raises(PolicyError, match="environment variable OPA_TEST_TOKEN is not set"):
            engine(s.url, opa_token_env="OPA_TEST_TOKEN")
    finally:
        s.stop()


@pytest.mark.parametrize(
    "url",
    [
        "ftp://opa:8181",
        "http://opa:8181/v1/data",
        "opa:8181",
        "http://:8181",
        "http://opa:port",
        "http://opa:99999",
        "http://ops:s3cret@opa:8181",
    ],
)
async def test_a_bad_opa_url_is_refused(url: str) -> None:
    with pytest.raises(PolicyError, match=r"policy\.opa_url") as err:
        engine(url)
    assert "s3cret" not in str(err.value)  # a URL with credentials is refused without echoing them


async def test_an_ipv6_opa_address() -> None:
    e = engine(f"http://[::1]:{free_port()}")  # nothing listens there: the error names the address as given
    try:
        d = await e.decide(CI_CALL)
    finally:
        await e.aclose()
    assert not d.allow and d.error and "OPA unreachable at [::1]:" in d.error


async def test_a_gateway_on_opa_records_the_decision_id_and_fails_closed_when_opa_goes(tmp_path: Path) -> None:
    s = start_standin()
    port = free_port()
    config = default_config(port, tmp_path, stdio_upstream("echo", ECHO)).replace(
        f'path = "{SHIPPED}"', f'engine = "opa"\nopa_url = "{s.url}"\ntimeout_ms = 10000', 1
    )
    assert 'engine = "opa"' in config
    gw = start_gateway(tmp_path, config, port)
    try:
        async with mcp_client(gw.url, KEYS["ci-bot"][2]) as c:
            assert not (await c.call_tool("echo__echo", {"text": "via opa"})).is_error
            s.stop()
            # Fails closed: the tool's visibility cannot be decided either, so it is answered as a missing one.
            with pytest.raises(MCPError, match="Unknown tool"):
                await c.call_tool("echo__echo", {"text": "opa is gone"})
        metrics = httpx2.get(gw.admin_base + "/metrics").text
        assert re.search(r"^mcp_gateway_policy_errors_total [1-9]", metrics, re.M), metrics
    finally:
        gw.stop()
        s.stop()
    calls = [r for r in gw.audit_records() if r["type"] == "decision" and r["action"] == "tools/call"]
    assert [r["allow"] for r in calls] == [True, False]
    assert UUID.match(calls[0]["engine_decision_id"])
    assert calls[0]["bundles"]["gateway"]["revision"] == load_policy(SHIPPED).revision
    assert "OPA unreachable" in calls[1]["error"]


# --- parity ---------------------------------------------------------------------------------------------------


def _embedded_decisions() -> list[tuple[bool, tuple[str, ...]]]:
    policy = compile_policy(SHIPPED, "gateway/decision")
    ev = new_evaluator()
    return [(d.allow, d.reasons) for d in (policy.decide(ev, c.input) for c in load_tables(policy.source))]


async def _opa_decisions(url: str) -> list[tuple[bool, tuple[str, ...]]]:
    e = engine(url, timeout_ms=5000)
    try:
        results = await run_cases_async(load_tables(load_policy(SHIPPED)), e.decide)
    finally:
        await e.aclose()
    return [(r.decision.allow, r.decision.reasons) for r in results]


@pytest.mark.skipif(
    importlib.util.find_spec("opa_bindings") is None,
    reason="opa-golib-python-bindings (OPA's Go evaluator) is not installed",
)
async def test_parity_with_opas_own_evaluator_behind_the_data_api() -> None:
    s = start_standin("--backend", "opa-go")
    try:
        assert await _opa_decisions(s.url) == _embedded_decisions()
    finally:
        s.stop()


@contextmanager
def _real_opa() -> Iterator[str]:
    url = os.environ.get("OPA_URL")
    if url:
        _upload(url)
        yield url
        return
    binary = shutil.which("opa")
    if binary is None:
        pytest.skip("no real OPA here: set OPA_URL to a test OPA server, or put the opa binary on PATH")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "run",
            "--server",
            "--addr",
            f"127.0.0.1:{port}",
            "--bundle",
            str(SHIPPED),
            "--ignore",
            "*_test.yaml",
            "--ignore",
            "*_test.json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _upload(url: str) -> None:
    """Load the shipped policy into the OPA at OPA_URL through its Policy and Data APIs (a test OPA only)."""
    source = load_policy(SHIPPED)
    for name, text in source.modules.items():
        httpx2.put(f"{url}/v1/policies/mcp-gateway/{name}", content=text.encode()).raise_for_status()
    httpx2.put(f"{url}/v1/data", json=source.data).raise_for_status()


async def test_parity_with_a_real_opa() -> None:
    with _real_opa() as url:
        assert await _opa_decisions(url) == _embedded_decisions()
