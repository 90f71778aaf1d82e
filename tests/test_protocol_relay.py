"""Server-to-client relaying through a real gateway, with the real SDK client: sampling, elicitation, logging and
its level, completion, subscriptions, list changes — each under policy, and each reaching only the agent session
whose upstream session sent it."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp.types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.conftest import ECHO, KEYS, REPO, RunningGateway, default_config, free_port, start_gateway, stdio_upstream

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]
FIXTURE = [sys.executable, str(REPO / "conformance" / "mcp" / "fixture.py")]
RECORDER = [sys.executable, str(REPO / "tests" / "fixtures" / "recording_server.py")]
POLICY = """package gateway
import rego.v1

reasons contains "researchers may not ask agents for sampling" if {
	input.agent.id == "researcher"
	input.action == "sampling/createMessage"
}

reasons contains "admins get no upstream log messages" if {
	input.agent.id == "admin"
	input.action == "notifications/message"
}

default decision := {"allow": false, "reasons": ["not an api key"]}

decision := {"allow": true, "reasons": []} if {
	input.agent.auth == "api_key"
	count(reasons) == 0
}

decision := {"allow": false, "reasons": [r | some r in reasons]} if count(reasons) > 0
"""


def key(agent: str) -> str:
    return KEYS[agent][2]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("relay")
    policy = workdir / "rego"
    policy.mkdir()
    (policy / "p.rego").write_text(POLICY)
    port = free_port()
    per_session = 'session_mode = "per_session"\n'
    upstreams = (
        stdio_upstream("fixture", FIXTURE, per_session)
        + stdio_upstream("shared", FIXTURE)
        + stdio_upstream("echo", ECHO, per_session)
        + stdio_upstream("rec", RECORDER, f'env = {{ RECORD_FILE = "{workdir / "rec.jsonl"}" }}\n')
        + stdio_upstream("own", RECORDER, f'env = {{ RECORD_FILE = "{workdir / "own.jsonl"}" }}\n' + per_session)
    )
    gw = start_gateway(workdir, default_config(port, workdir, upstreams, policy=policy), port)
    yield gw
    gw.stop()


@asynccontextmanager
async def client(url: str, agent: str, mode: str = "legacy", **callbacks: Any) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key(agent)}"}, timeout=30)
    async with http, Client(streamable_http_client(url, http_client=http), mode=mode, cache=None, **callbacks) as c:
        yield c


def sampler(seen: list[str], reply: str) -> Any:
    async def sample(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        seen.append(params.messages[0].content.text)  # type: ignore[union-attr]
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=reply),
            model="test-model",
            stop_reason="endTurn",
        )

    return sample


def text(result: types.CallToolResult) -> str:
    return str(result.content[0].text)  # type: ignore[union-attr]


def decisions(gw: RunningGateway, action: str) -> list[dict[str, Any]]:
    return [r for r in gw.audit_records() if r["type"] == "decision" and r["action"] == action]


async def test_sampling_is_relayed_to_the_agent_and_audited(gateway: RunningGateway) -> None:
    seen: list[str] = []
    async with client(gateway.url + "/fixture", "ci-bot", sampling_callback=sampler(seen, "forty-two")) as c:
        result = await c.call_tool("test_sampling", {"prompt": "what is six times seven?"})
    assert seen == ["what is six times seven?"]
    assert text(result) == "LLM response: forty-two"
    record = decisions(gateway, "sampling/createMessage")[-1]
    assert record["allow"] and record["agent"] == "ci-bot" and record["server"] == "fixture"


async def test_sampling_denied_by_policy_never_reaches_the_agent(gateway: RunningGateway) -> None:
    seen: list[str] = []
    async with client(gateway.url, "researcher", sampling_callback=sampler(seen, "nope")) as c:
        with pytest.raises(MCPError) as err:
            await c.call_tool("fixture__test_sampling", {"prompt": "secret"})
    assert "researchers may not ask agents for sampling" in str(err.value)
    assert seen == []
    record = decisions(gateway, "sampling/createMessage")[-1]
    assert not record["allow"] and record["agent"] == "researcher"


async def test_a_relayed_request_whose_session_ends_still_has_an_outcome(gateway: RunningGateway) -> None:
    """The agent closes its session while the upstream's sampling request waits for it: the upstream session is
    closed with it, and the audit log says how the relayed request ended."""
    asked = anyio.Event()

    async def never(ctx: Any, params: Any) -> Any:
        asked.set()
        await anyio.sleep(3600)

    url = gateway.url + "/fixture"
    async with client(url, "ci-bot", sampling_callback=never) as c, anyio.create_task_group() as tg:
        tg.start_soon(c.call_tool, "test_sampling", {"prompt": "abandoned"})
        await asked.wait()
        tg.cancel_scope.cancel()
    record = decisions(gateway, "sampling/createMessage")[-1]
    assert record["allow"] and record["arguments_digest"]
    deadline = time.monotonic() + 10
    outcomes: list[dict[str, Any]] = []
    while not outcomes and time.monotonic() < deadline:  # the session's upstream closes after the client left
        await anyio.sleep(0.1)
        outcomes = [
            r for r in gateway.audit_records() if r["type"] == "outcome" and r["decision_id"] == record["decision_id"]
        ]
    assert len(outcomes) == 1 and outcomes[0]["outcome"] in ("agent_error", "cancelled"), outcomes


async def test_a_request_the_upstream_cancels_is_cancelled_at_the_agent_and_not_answered(
    gateway: RunningGateway,
) -> None:
    """The upstream asks the agent (sampling), then cancels its request before the agent has answered: the agent's
    side is cancelled, the upstream gets no answer (MCP: a cancelled request is not answered), the audit says so."""
    asked, release = anyio.Event(), anyio.Event()

    async def slow(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.set()
        await release.wait()
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="late"), model="m", stop_reason="endTurn"
        )

    request = {
        "jsonrpc": "2.0",
        "id": "sample-1",
        "method": "sampling/createMessage",
        "params": {"messages": [{"role": "user", "content": {"type": "text", "text": "hm?"}}], "maxTokens": 10},
    }
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "sample-1"}}
    async with client(gateway.url, "ci-bot", sampling_callback=slow) as c:
        await c.call_tool("own__raw", {"lines": [json.dumps(request)]})
        with anyio.fail_after(10):
            await asked.wait()
        await c.call_tool("own__raw", {"lines": [json.dumps(cancel)]})
        record = decisions(gateway, "sampling/createMessage")[-1]
        deadline = time.monotonic() + 10
        outcomes: list[str] = []
        while not outcomes and time.monotonic() < deadline:
            await anyio.sleep(0.1)
            outcomes = [
                r["outcome"]
                for r in gateway.audit_records()
                if r["type"] == "outcome" and r["decision_id"] == record["decision_id"]
            ]
        release.set()
        await c.call_tool("own__echo", {"text": "after"})  # the upstream has read everything sent before this
    assert outcomes == ["cancelled"]
    received = [json.loads(line) for line in (gateway.workdir / "own.jsonl").read_text().splitlines()]
    assert not [m for m in received if m.get("id") == "sample-1"], "a cancelled request was answered"


async def test_an_agent_without_sampling_is_not_asked(gateway: RunningGateway) -> None:
    """The per-session upstream is told what this agent's client supports: no sampling callback, no sampling."""
    async with client(gateway.url + "/fixture", "ci-bot") as c:
        with pytest.raises(MCPError) as err:
            await c.call_tool("test_sampling", {"prompt": "anyone?"})
    assert "the agent's client does not support sampling" in str(err.value)


async def test_elicitation_is_relayed_with_its_schema(gateway: RunningGateway) -> None:
    asked: list[dict[str, Any]] = []

    async def elicit(ctx: Any, params: Any) -> types.ElicitResult:
        asked.append(params.requested_schema)
        return types.ElicitResult(action="accept", content={"untitledSingle": "option2"})

    async with client(gateway.url + "/fixture", "ci-bot", elicitation_callback=elicit) as c:
        result = await c.call_tool("test_elicitation_sep1330_enums", {})
    assert "action=accept" in text(result) and "option2" in text(result)
    legacy = asked[0]["properties"]["legacyEnum"]
    assert legacy["enumNames"] == ["Option One", "Option Two", "Option Three"]  # relayed as sent, not reshaped


async def test_log_messages_follow_the_level_the_agent_set(gateway: RunningGateway) -> None:
    logs: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async with client(gateway.url + "/fixture", "ci-bot", logging_callback=on_log) as c:
        await c.set_logging_level("debug")
        await c.call_tool("test_tool_with_logging", {})
        await anyio.sleep(0.3)
        assert [p.data for p in logs] == ["Tool execution started", "Tool processing data", "Tool execution completed"]
        await c.set_logging_level("error")
        await c.call_tool("test_tool_with_logging", {})
        await anyio.sleep(0.3)
        assert len(logs) == 3  # info messages are below "error"
    assert decisions(gateway, "logging/setLevel")


async def test_log_messages_denied_by_policy_are_dropped(gateway: RunningGateway) -> None:
    logs: list[Any] = []

    async def on_log(params: Any) -> None:
        logs.append(params)

    async with client(gateway.url + "/fixture", "admin", logging_callback=on_log) as c:
        await c.set_logging_level("debug")
        result = await c.call_tool("test_tool_with_logging", {})
        await anyio.sleep(0.3)
    assert not result.is_error and logs == []
    denied = [r for r in decisions(gateway, "notifications/message") if r["agent"] == "admin"]
    assert denied and not denied[-1]["allow"] and denied[-1]["reasons"] == ["admins get no upstream log messages"]


async def test_completion_and_subscriptions(gateway: RunningGateway) -> None:
    async with client(gateway.url, "ci-bot") as c:
        done = await c.complete(
            types.PromptReference(type="ref/prompt", name="fixture__test_prompt_with_arguments"),
            {"name": "arg1", "value": "par"},
        )
        assert done.completion.values == ["paris", "park", "party"]
        await c.subscribe_resource("test://watched-resource")
        await c.unsubscribe_resource("test://watched-resource")
        with pytest.raises(MCPError):
            await c.complete(
                types.PromptReference(type="ref/prompt", name="fixture__no_such_prompt"), {"name": "arg1", "value": "x"}
            )
    assert decisions(gateway, "completion/complete") and decisions(gateway, "resources/subscribe")


async def test_each_agent_session_hears_only_its_own_upstream_session(gateway: RunningGateway) -> None:
    seen_a: list[str] = []
    seen_b: list[str] = []
    results: dict[str, str] = {}

    async def run(agent: str, seen: list[str], prompt: str) -> None:
        async with client(gateway.url + "/fixture", agent, sampling_callback=sampler(seen, f"answer for {agent}")) as c:
            for _ in range(3):
                results[agent] = text(await c.call_tool("test_sampling", {"prompt": prompt}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "ci-bot", seen_a, "from ci-bot")
        tg.start_soon(run, "admin", seen_b, "from admin")
    assert seen_a == ["from ci-bot"] * 3 and seen_b == ["from admin"] * 3
    assert results == {"ci-bot": "LLM response: answer for ci-bot", "admin": "LLM response: answer for admin"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_per_session_upstreams_are_separate_and_closed_with_their_session(gateway: RunningGateway) -> None:
    async with client(gateway.url, "ci-bot") as a, client(gateway.url, "ci-bot") as b:
        pid_a = int(text(await a.call_tool("echo__pid", {})))
        pid_b = int(text(await b.call_tool("echo__pid", {})))
        assert pid_a != pid_b
        assert int(text(await a.call_tool("echo__pid", {}))) == pid_a  # the same session keeps its upstream
    deadline = time.monotonic() + 10
    while (alive(pid_a) or alive(pid_b)) and time.monotonic() < deadline:
        await anyio.sleep(0.1)
    assert not alive(pid_a) and not alive(pid_b), "a per-session upstream outlived its agent session"
    async with client(gateway.url, "ci-bot", mode="auto") as modern:  # the 2026 era has no session: shared upstream
        first = text(await modern.call_tool("echo__pid", {}))
        assert text(await modern.call_tool("echo__pid", {})) == first


async def test_shared_upstreams_refuse_server_requests_with_a_reason(gateway: RunningGateway) -> None:
    seen: list[str] = []
    async with client(gateway.url, "ci-bot", sampling_callback=sampler(seen, "x")) as c:
        with pytest.raises(MCPError) as err:
            await c.call_tool("shared__test_sampling", {"prompt": "who am I?"})
    assert "session_mode" in str(err.value) and seen == []


async def test_shared_upstream_notifications_reach_the_right_sessions(gateway: RunningGateway) -> None:
    """list_changed goes to every session that sees the upstream; resources/updated only to its subscribers;
    log messages of a shared session (which cannot say whose they are) to nobody."""
    got: dict[str, list[str]] = {"sub": [], "other": []}

    def collector(name: str) -> Any:
        async def handle(message: Any) -> None:
            method = getattr(message, "method", None)
            if method is not None:
                got[name].append(method)

        return handler_guard(handle)

    async with (
        client(gateway.url, "ci-bot", message_handler=collector("sub")) as sub,
        client(gateway.url + "/rec", "ci-bot", message_handler=collector("other")) as other,
    ):
        await sub.subscribe_resource("rec://watched")
        await other.list_tools()
        await sub.call_tool(
            "rec__notify", {"method": "notifications/resources/updated", "params": {"uri": "rec://watched"}}
        )
        await sub.call_tool(
            "rec__notify", {"method": "notifications/message", "params": {"level": "error", "data": "whose is this?"}}
        )
        await sub.call_tool("rec__notify", {"method": "notifications/tools/list_changed"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            "notifications/tools/list_changed" in got["sub"] and "notifications/tools/list_changed" in got["other"]
        ):
            await anyio.sleep(0.1)
        assert "rec__added_later" in {t.name for t in (await sub.list_tools()).tools}  # the gateway re-listed
    assert got["sub"].count("notifications/resources/updated") == 1
    assert "notifications/resources/updated" not in got["other"]
    assert "notifications/message" not in got["sub"] + got["other"]
    assert "notifications/tools/list_changed" in got["sub"] and "notifications/tools/list_changed" in got["other"]


def handler_guard(fn: Any) -> Any:
    """Message handlers also receive transport exceptions; the tests only look at notifications."""

    async def guarded(message: Any) -> None:
        if not isinstance(message, Exception):
            await fn(getattr(message, "root", message))

    return guarded


async def test_the_standalone_stream_carries_notifications_and_is_released(gateway: RunningGateway) -> None:
    """The session's GET stream (served by the gateway's own handler, gateway.sdk_adapter.serve_standalone_streams):
    one per session (a second gets 409), a notification arrives on it as an SSE event, a client that goes frees
    it for the next GET, and DELETE ends it."""
    head = {
        "Authorization": f"Bearer {key('ci-bot')}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2025-11-25",
    }
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    notify = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "rec__notify", "arguments": {"method": "notifications/tools/list_changed"}},
    }
    async with httpx2.AsyncClient(timeout=10) as http:
        r = await http.post(gateway.url, json=init, headers=head)
        assert r.status_code == 200, r.text
        head["MCP-Session-Id"] = r.headers["mcp-session-id"]
        r = await http.post(gateway.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=head)
        assert r.status_code == 202, r.text
        listen = {**head, "Accept": "text/event-stream"}
        async with http.stream("GET", gateway.url, headers=listen) as stream:
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
            assert stream.headers["mcp-session-id"] == head["MCP-Session-Id"]
            assert (await http.get(gateway.url, headers=listen)).status_code == 409
            assert (await http.post(gateway.url, json=notify, headers=head)).status_code == 200
            methods = []
            with anyio.fail_after(10):
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        methods.append(json.loads(line[len("data: ") :]).get("method"))
                        if methods[-1] == "notifications/tools/list_changed":
                            break
            assert "notifications/tools/list_changed" in methods
        status = 409  # the client went: the session's stream slot frees for its next GET
        with anyio.fail_after(10):
            while status == 409:
                async with http.stream("GET", gateway.url, headers=listen) as stream:
                    status = stream.status_code
                    if status == 200:
                        assert (await http.delete(gateway.url, headers=head)).status_code == 200
                        with anyio.fail_after(5):
                            rest = [line async for line in stream.aiter_lines()]  # ends: DELETE closed it
                        assert not any(line.startswith("data: ") for line in rest), rest
                await anyio.sleep(0.05)
        assert status == 200
