"""Calls through the gateway with the real SDK client, in both protocol eras, to real upstreams."""

from __future__ import annotations

import json

import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import KEYS, RunningGateway, mcp_client

pytestmark = pytest.mark.anyio
ERAS = ["legacy", "auto"]  # 2025-11-25 sessions, and the stateless 2026-07-28 era


def key(agent: str) -> str:
    return KEYS[agent][2]


@pytest.mark.parametrize("mode", ERAS)
async def test_allowed_call_is_forwarded_to_mcp_server_time(core_gateway: RunningGateway, mode: str) -> None:
    async with mcp_client(core_gateway.url, key("ci-bot"), mode) as c:
        assert c.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        result = await c.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert not result.is_error
        payload = json.loads(result.content[0].text)  # type: ignore[union-attr]
        assert payload["timezone"] == "UTC" and "datetime" in payload


@pytest.mark.parametrize("mode", ERAS)
async def test_denied_call_returns_reasons_and_decision_id(core_gateway: RunningGateway, mode: str) -> None:
    async with mcp_client(core_gateway.url, key("researcher"), mode) as c:
        result = await c.call_tool(
            "time__convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
        )
        assert result.is_error
        text = result.content[0].text  # type: ignore[union-attr]
        assert "Denied by policy" in text
        assert "research agents may not use convert_time" in text
        assert "decision id" in text


@pytest.mark.parametrize("mode", ERAS)
async def test_argument_level_rule(core_gateway: RunningGateway, mode: str) -> None:
    async with mcp_client(core_gateway.url, key("ci-bot"), mode) as c:
        ok = await c.call_tool(
            "time__convert_time", {"source_timezone": "Europe/Paris", "time": "12:00", "target_timezone": "UTC"}
        )
        assert not ok.is_error, ok.content
        bad = await c.call_tool(
            "time__convert_time", {"source_timezone": "Mars/Olympus", "time": "12:00", "target_timezone": "UTC"}
        )
        assert bad.is_error
        assert "Mars/Olympus" in bad.content[0].text  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ERAS)
async def test_hidden_tool_is_answered_like_a_missing_one(core_gateway: RunningGateway, mode: str) -> None:
    async with mcp_client(core_gateway.url, key("researcher"), mode) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert "echo__echo" not in names
        with pytest.raises(MCPError) as hidden:
            await c.call_tool("echo__echo", {"text": "hi"})
        with pytest.raises(MCPError) as missing:
            await c.call_tool("echo__no_such_tool", {"text": "hi"})
        assert hidden.value.code == missing.value.code
        same = missing.value.message.replace("echo__no_such_tool", "X")
        assert hidden.value.message.replace("echo__echo", "X") == same


async def test_two_teams_see_different_tool_lists(core_gateway: RunningGateway) -> None:
    async with mcp_client(core_gateway.url, key("ci-bot")) as c:
        platform = {t.name for t in (await c.list_tools()).tools}
    async with mcp_client(core_gateway.url, key("researcher")) as c:
        research = {t.name for t in (await c.list_tools()).tools}
    assert {"time__get_current_time", "time__convert_time", "echo__echo", "echo__slow"} <= platform
    assert "time__get_current_time" in research
    assert not any(n.startswith("echo__") for n in research)
    assert research < platform


async def test_destructive_tool_needs_admin(core_gateway: RunningGateway) -> None:
    async with mcp_client(core_gateway.url, key("ci-bot")) as c:
        denied = await c.call_tool("echo__delete_everything", {"path": "/"})
        assert denied.is_error and "destructive tools need the admin role" in denied.content[0].text  # type: ignore[union-attr]
    async with mcp_client(core_gateway.url, key("admin")) as c:
        allowed = await c.call_tool("echo__delete_everything", {"path": "/"})
        assert not allowed.is_error
        assert allowed.content[0].text == "pretended to delete /"  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ERAS)
async def test_single_upstream_endpoint_uses_original_names(core_gateway: RunningGateway, mode: str) -> None:
    async with mcp_client(core_gateway.url + "/echo", key("ci-bot"), mode) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert "echo" in names and not any("__" in n for n in names)
        result = await c.call_tool("echo", {"text": "hello"})
        assert result.content[0].text == "hello"  # type: ignore[union-attr]
        with pytest.raises(MCPError):
            await c.call_tool("get_current_time", {"timezone": "UTC"})  # a tool of another upstream


async def test_unknown_upstream_endpoint_is_404(core_gateway: RunningGateway) -> None:
    import httpx2

    r = httpx2.post(core_gateway.url + "/nope", headers={"Authorization": f"Bearer {key('ci-bot')}"}, json={})
    assert r.status_code == 404


async def test_upstream_server_identity_is_not_leaked(core_gateway: RunningGateway) -> None:
    async with mcp_client(core_gateway.url, key("ci-bot"), "auto") as c:
        assert c.server_info is not None and c.server_info.name == "mcp-gateway"
        result = await c.call_tool("echo__echo", {"text": "x"})
        meta = result.meta or {}
        info = meta.get("io.modelcontextprotocol/serverInfo")
        assert info is None or info.get("name") == "mcp-gateway"


async def test_prompts_and_resources_are_routed(core_gateway: RunningGateway) -> None:
    async with mcp_client(core_gateway.url, key("ci-bot")) as c:
        prompts = {p.name for p in (await c.list_prompts()).prompts}
        assert "echo__greet" in prompts
        got = await c.get_prompt("echo__greet", {"who": "gateway"})
        assert got.messages[0].content.text == "Hello, gateway!"  # type: ignore[union-attr]
        uris = {str(r.uri) for r in (await c.list_resources()).resources}
        assert "echo://readme" in uris
        read = await c.read_resource("echo://readme")
        assert read.contents[0].text == "contents of echo://readme"  # type: ignore[union-attr]
        with pytest.raises(MCPError):
            await c.read_resource("nowhere://x")


@pytest.mark.parametrize("mode", ERAS)
async def test_progress_is_relayed_from_the_upstream(core_gateway: RunningGateway, mode: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with mcp_client(core_gateway.url, key("ci-bot"), mode) as c:
        result = await c.call_tool("echo__slow", {"seconds": 0.2}, progress_callback=on_progress)
        assert result.content[0].text == "slept 0.2"  # type: ignore[union-attr]
    assert [p for p, _, _ in seen] == [1, 2, 3, 4]
    assert seen[-1][1] == 4 and seen[-1][2] == "step 4"


async def test_fast_path_and_sdk_path_answer_alike(core_gateway: RunningGateway) -> None:
    """Plain calls take the gateway's fast path; calls with a progress token take the SDK's. Same answers."""

    async def ignore(progress: float, total: float | None, message: str | None) -> None:
        return None

    async with mcp_client(core_gateway.url, key("ci-bot")) as c:
        fast = await c.call_tool("echo__echo", {"text": "same"})
        slow = await c.call_tool("echo__echo", {"text": "same"}, progress_callback=ignore)
        assert fast.content == slow.content and fast.is_error == slow.is_error
        fast_denied = await c.call_tool("echo__delete_everything", {"path": "/x"})
        slow_denied = await c.call_tool("echo__delete_everything", {"path": "/x"}, progress_callback=ignore)
        assert fast_denied.is_error and slow_denied.is_error
        strip = lambda r: r.content[0].text.split("(decision id")[0]  # noqa: E731
        assert strip(fast_denied) == strip(slow_denied)
        with pytest.raises(MCPError) as e1:
            await c.call_tool("echo__nope", {})
        with pytest.raises(MCPError) as e2:
            await c.call_tool("echo__nope", {}, progress_callback=ignore)
        assert (e1.value.code, e1.value.message) == (e2.value.code, e2.value.message)
