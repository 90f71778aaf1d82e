"""Upstream faults, with the real SDK client through a real gateway: death mid-call, hangs, an HTTP upstream that
is not there at start, and 10 MB results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx2
import orjson
import pytest
from mcp.shared.exceptions import MCPError

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
from tests.test_protocol_relay import FIXTURE, client

pytestmark = pytest.mark.anyio
KEY = KEYS["ci-bot"][2]
RECORDER = [sys.executable, str(REPO / "tests" / "fixtures" / "recording_server.py")]

ALLOW_ALL = (
    "package gateway\nimport rego.v1\n"
    'decision := {"allow": true, "reasons": []} if input.agent.auth == "api_key"\n'
    'default decision := {"allow": false, "reasons": ["not an api key"]}\n'
)


def allow_all_policy(workdir: Path) -> Path:
    policy = workdir / "rego"
    policy.mkdir(exist_ok=True)
    (policy / "p.rego").write_text(ALLOW_ALL)
    return policy


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def recorded(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("resilience")
    port = free_port()
    upstreams = (
        stdio_upstream("echo", ECHO)
        # per-tool timeout on one upstream, per-upstream timeout on the other
        + stdio_upstream(
            "rec",
            RECORDER,
            f'env = {{ RECORD_FILE = "{workdir / "rec.jsonl"}" }}\n'
            "timeout_s = 30\ntool_timeouts_s = { hang = 1.0 }\n",
        )
        + stdio_upstream("rec2", RECORDER, f'env = {{ RECORD_FILE = "{workdir / "rec2.jsonl"}" }}\ntimeout_s = 1.0\n')
        # default timeouts (60 s): whatever cancels a call here, it is not the gateway's timeout
        + stdio_upstream("rec3", RECORDER, f'env = {{ RECORD_FILE = "{workdir / "rec3.jsonl"}" }}\n')
    )
    gw = start_gateway(workdir, default_config(port, workdir, upstreams, policy=allow_all_policy(workdir)), port)
    yield gw
    gw.stop()


async def test_upstream_killed_mid_call_is_named_audited_restarted(gateway: RunningGateway) -> None:
    async with mcp_client(gateway.url, KEY) as c:
        pid = int((await c.call_tool("echo__pid", {})).content[0].text)  # type: ignore[union-attr]
        failure: list[BaseException] = []

        async def slow_call() -> None:
            try:
                await c.call_tool("echo__slow", {"seconds": 30})
            except MCPError as exc:
                failure.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_call)
            await anyio.sleep(0.5)  # the call is in flight at the upstream
            os.kill(pid, signal.SIGKILL)
        assert failure, "the call should fail when its upstream dies"
        message = str(failure[0])
        assert "upstream 'echo'" in message and "decision id" in message
        wait_for(
            lambda: httpx2.get(gateway.admin_base + "/readyz").json()["upstreams"]["echo"]["up"], "echo to restart"
        )
        again = await c.call_tool("echo__echo", {"text": "back"})
        assert again.content[0].text == "back"  # type: ignore[union-attr]
        assert int((await c.call_tool("echo__pid", {})).content[0].text) != pid  # type: ignore[union-attr]
    outcomes = [r for r in gateway.audit_records() if r["type"] == "outcome" and r["outcome"] == "upstream_error"]
    assert any(r["error_kind"] == "crashed" and "echo" in r["error"] for r in outcomes)


async def test_upstream_that_closes_its_output_is_restarted_not_waited_for(gateway: RunningGateway) -> None:
    """An upstream that closes stdout but stays alive answers nothing more: the call fails at once (not at its 30 s
    timeout), the process is stopped and restarted, and the very next call waits for the new one."""
    async with mcp_client(gateway.url, KEY) as c:
        with pytest.raises(MCPError) as err:
            await c.call_tool("rec__close_output", {})
        assert "upstream 'rec' stopped while the call was in flight (closed its output)" in str(err.value)
        assert (await c.call_tool("rec__echo", {"text": "new"})).content[0].text == "new"  # type: ignore[union-attr]


async def test_hanging_tool_times_out_per_tool_and_is_cancelled_upstream(gateway: RunningGateway) -> None:
    async with mcp_client(gateway.url, KEY) as c:
        with pytest.raises(MCPError) as err:
            await c.call_tool("rec__hang", {})
        assert "upstream 'rec'" in str(err.value) and "within 1 s" in str(err.value)
        # other calls to the same upstream still work (its timeout for other tools is 30 s)
        assert (await c.call_tool("rec__echo", {"text": "ok"})).content[0].text == "ok"  # type: ignore[union-attr]
    messages = recorded(gateway.workdir / "rec.jsonl")
    calls = [m for m in messages if m.get("method") == "tools/call" and m["params"]["name"] == "hang"]
    cancels = [m for m in messages if m.get("method") == "notifications/cancelled"]
    assert calls and cancels, messages
    assert cancels[-1]["params"]["requestId"] == calls[-1]["id"]
    outcomes = [r for r in gateway.audit_records() if r["type"] == "outcome" and r.get("error_kind") == "timeout"]
    assert outcomes


async def test_hanging_upstream_times_out_per_upstream(gateway: RunningGateway) -> None:
    async with mcp_client(gateway.url + "/rec2", KEY) as c:
        with pytest.raises(MCPError) as err:
            await c.call_tool("sleep", {"seconds": 3})
        assert "upstream 'rec2'" in str(err.value) and "within 1 s" in str(err.value)
    # the recorder reads its input again once its 3 s sleep is over: then the cancellation is on record
    log = gateway.workdir / "rec2.jsonl"
    wait_for(
        lambda: any(m.get("method") == "notifications/cancelled" for m in recorded(log)),
        "the upstream to receive notifications/cancelled",
    )


async def test_agent_cancellation_reaches_the_upstream(gateway: RunningGateway) -> None:
    """The agent gives up on a call: the gateway tells the upstream (notifications/cancelled for its request id)."""
    updates: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append(progress)

    async with mcp_client(gateway.url, KEY) as c:
        with anyio.move_on_after(1.0):
            await c.call_tool("rec3__hang", {}, progress_callback=on_progress)
        await anyio.sleep(0.5)
        still = await c.call_tool("rec3__echo", {"text": "still here"})
        assert still.content[0].text == "still here"  # type: ignore[union-attr]
    messages = recorded(gateway.workdir / "rec3.jsonl")
    hang = [m for m in messages if m.get("method") == "tools/call" and m["params"]["name"] == "hang"][-1]
    cancels = [m for m in messages if m.get("method") == "notifications/cancelled"]
    assert any(m["params"]["requestId"] == hang["id"] for m in cancels), messages


async def test_agent_cancellation_on_the_fast_path_reaches_the_upstream(gateway: RunningGateway) -> None:
    async with mcp_client(gateway.url, KEY) as c:
        with anyio.move_on_after(1.0):
            await c.call_tool("rec3__hang", {})
        await anyio.sleep(1.0)
    messages = recorded(gateway.workdir / "rec3.jsonl")
    hang = [m for m in messages if m.get("method") == "tools/call" and m["params"]["name"] == "hang"][-1]
    cancels = [m for m in messages if m.get("method") == "notifications/cancelled"]
    assert any(m["params"]["requestId"] == hang["id"] for m in cancels), messages


async def test_ten_megabyte_result_passes_through(gateway: RunningGateway) -> None:
    size = 10 * 1024 * 1024
    async with mcp_client(gateway.url, KEY) as c:
        result = await c.call_tool("echo__big", {"size": size})
        assert not result.is_error
        assert len(result.content[0].text) == size  # type: ignore[union-attr]
        result = await c.call_tool("rec__big", {"size": size})
        assert len(result.content[0].text) == size  # type: ignore[union-attr]


def test_http_upstream_unreachable_at_start_then_recovers(tmp_path: Path) -> None:
    """The gateway starts without its HTTP upstream, says so on /readyz, lists none of its tools, and recovers."""
    up_port, port = free_port(), free_port()
    upstreams = (
        f'[[upstreams]]\nname = "remote"\ntransport = "http"\nurl = "http://127.0.0.1:{up_port}/mcp"\n'
        "start_timeout_s = 2\n\n" + stdio_upstream("echo", ECHO)
    )
    config = default_config(port, tmp_path, upstreams, policy=allow_all_policy(tmp_path))
    gw = start_gateway(tmp_path, config, port, wait_ready=False)
    remote: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: httpx2.get(gw.admin_base + "/readyz").json()["upstreams"]["echo"]["up"], "echo to come up")
        ready = httpx2.get(gw.admin_base + "/readyz")
        assert ready.status_code == 503
        state = ready.json()["upstreams"]["remote"]
        assert state["up"] is False and state["error"]

        async def tool_names() -> set[str]:
            async with mcp_client(gw.url, KEY) as c:
                return {t.name for t in (await c.list_tools()).tools}

        names = anyio.run(tool_names)
        assert "echo__echo" in names and not any(n.startswith("remote__") for n in names)

        remote = subprocess.Popen([*ECHO, "--transport", "http", "--port", str(up_port)], stderr=subprocess.DEVNULL)
        wait_for(
            lambda: httpx2.get(gw.admin_base + "/readyz").status_code == 200, "the remote upstream to be reachable"
        )

        async def call_remote() -> str:
            async with mcp_client(gw.url, KEY) as c:
                names = {t.name for t in (await c.list_tools()).tools}
                assert "remote__echo" in names
                return str((await c.call_tool("remote__echo", {"text": "recovered"})).content[0].text)  # type: ignore[union-attr]

        assert anyio.run(call_remote) == "recovered"
    finally:
        gw.stop()
        if remote is not None:
            remote.terminate()
            remote.wait()


def test_graceful_shutdown_drains_calls_in_flight_and_records_them(tmp_path: Path) -> None:
    port = free_port()
    config = default_config(port, tmp_path, stdio_upstream("echo", ECHO), policy=allow_all_policy(tmp_path))
    gw = start_gateway(tmp_path, config, port)
    results: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        pass

    async def one(with_progress: bool) -> None:
        got = None
        try:
            async with mcp_client(gw.url, KEY) as c:
                await c.list_tools()  # else the SDK client lists them after the result: a new request mid-shutdown
                progress = on_progress if with_progress else None
                r = await c.call_tool("echo__slow", {"seconds": 3}, progress_callback=progress)
                got = str(r.content[0].text)  # type: ignore[union-attr]
        except Exception as exc:  # closing the session fails once the gateway is gone: the result is what counts
            got = got or f"no result: {exc!r}"[:300]
        results.append(got)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(one, i % 2 == 0)  # both the fast path and the SDK's streamed path
            await anyio.sleep(1.5)  # every session is established (and listening) before the signal
            gw.proc.terminate()

    try:
        anyio.run(run)
        assert results == ["slept 3.0"] * 6, "\n".join(results)
        assert gw.proc.wait(20) is not None
        records = gw.audit_records()
        slow = {r["decision_id"] for r in records if r["type"] == "decision" and r["tool"] == "slow"}
        done = {r["decision_id"] for r in records if r["type"] == "outcome" and r["outcome"] == "ok"}
        assert len(slow) == 6 and slow <= done
    finally:
        gw.stop()


def test_shutdown_records_the_outcome_of_a_relayed_request_still_waiting_for_its_agent(tmp_path: Path) -> None:
    """The agent never answers the upstream's sampling request; the gateway is stopped: once its grace period is
    over the request is cancelled, and the audit log still says so (no allowed request without an outcome)."""
    port = free_port()
    upstream = stdio_upstream("fixture", FIXTURE, 'session_mode = "per_session"\n')
    gw = start_gateway(tmp_path, default_config(port, tmp_path, upstream, policy=allow_all_policy(tmp_path)), port)

    async def run() -> None:
        asked = anyio.Event()

        async def never(ctx: object, params: object) -> None:
            asked.set()
            await anyio.sleep(3600)

        url = gw.url + "/fixture"
        with anyio.move_on_after(40):
            async with client(url, "ci-bot", sampling_callback=never) as c, anyio.create_task_group() as tg:
                tg.start_soon(c.call_tool, "test_sampling", {"prompt": "never answered"})
                await asked.wait()
                gw.proc.terminate()

    try:
        try:
            anyio.run(run)
        except Exception:  # the client's session ends with the gateway: what counts is the audit log
            pass
        assert gw.proc.wait(30) is not None
    finally:
        gw.stop()
    records = gw.audit_records()
    [sampling] = [r for r in records if r["type"] == "decision" and r["action"] == "sampling/createMessage"]
    outcomes = [r["outcome"] for r in records if r["type"] == "outcome" and r["decision_id"] == sampling["decision_id"]]
    assert outcomes == ["cancelled"]
