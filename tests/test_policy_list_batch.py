"""A list's items are decided in one batch: ``Decider.visible_many`` asks the embedded engine once (``decide_many``,
on one revision) for every item it has not cached, and decides each exactly as ``visible`` decides it alone; a list
asked again is answered from the cache. Then the same through the real gateway: tools/list shows the granted tools
and only those, and a hidden tool still answers as a missing one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from gateway.decide import Decider, Request
from gateway.identity import Agent
from gateway.metrics import Metrics
from gateway.policy.bounds import Limits
from gateway.policy.decision import Decision
from gateway.policy.rvm import RvmEngine
from tests.conftest import ECHO, KEYS, REPO, default_config, free_port, mcp_client, start_gateway, stdio_upstream

GRANTED = ["get_current_time", "convert_time"]  # what role ci may use on "time" (rego/data.json)


class Counting(RvmEngine):
    def __init__(self) -> None:
        super().__init__(REPO / "rego", "gateway/decision", 1000)
        self.batches: list[int] = []
        self.singles = 0

    async def decide(self, input: dict[str, Any]) -> Decision:
        self.singles += 1
        return await super().decide(input)

    async def decide_many(self, inputs: Sequence[dict[str, Any]]) -> list[Decision]:
        self.batches.append(len(inputs))
        return await super().decide_many(inputs)


def _items(n: int) -> list[tuple[str, dict[str, Any]]]:
    return [(GRANTED[i] if i < len(GRANTED) else f"tool_{i}", {"readOnlyHint": i % 2 == 0}) for i in range(n)]


def test_a_list_is_decided_in_one_call_as_each_item_alone_and_then_cached() -> None:
    req = Request(agent=Agent("ci-bot", "platform", ("ci",), "api_key"), action="tools/list", view=None)
    items = _items(100)

    async def main() -> None:
        batched, alone = Counting(), Counting()
        d_batch, d_alone = Decider(batched, Metrics(), Limits()), Decider(alone, Metrics(), Limits())
        seen = await d_batch.visible_many(req, "time", "tool", items)
        assert batched.batches == [100] and batched.singles == 0
        each = [await d_alone.visible(req, "time", "tool", n, a) for n, a in items]
        assert seen == each
        assert [n for (n, _), s in zip(items, seen, strict=True) if s] == GRANTED
        assert await d_batch.visible_many(req, "time", "tool", items) == seen
        assert batched.batches == [100] and batched.singles == 0  # answered from the cache
        other = Request(agent=Agent("researcher", "research", (), "api_key"), action="tools/list", view=None)
        assert await d_batch.visible_many(other, "time", "tool", items[:3]) == [
            await d_alone.visible(other, "time", "tool", n, a) for n, a in items[:3]
        ]
        assert batched.batches == [100, 3]  # another identity: decided, not taken from ci-bot's entries

    anyio.run(main)


@pytest.mark.parametrize("kind", ["tool", "prompt", "resource"])
def test_a_batch_decides_on_exactly_each_items_own_input(kind: str) -> None:
    """The batch builds the request's part of the input once and copies it per item: each item's input is still
    the one it would have alone (name, annotations), and each is decided on its own (a shared result never
    decides two items that differ)."""
    engine = Counting()
    decider = Decider(engine, Metrics(), Limits())
    req = Request(agent=Agent("ci-bot", "platform", ("ci",), "api_key"), action="tools/list", view=None)
    items = [*_items(5), ("write_file", {"destructiveHint": True}), ("x", {})]
    inputs = decider._list_inputs(req, "files", kind, items)
    assert inputs == [decider._list_input(req, "files", kind, n, a) for n, a in items]
    decided = engine.policy.evaluate_many(inputs)
    assert decided == [engine.policy.evaluate(i) for i in inputs]
    if kind == "tool":
        assert [d.allow for d in decided] == [False] * 5 + [True, False]
        assert decided[0] is decided[1] and decided[5] is not decided[0]


@pytest.mark.anyio
async def test_tools_list_through_the_gateway_shows_granted_tools_and_hides_the_others(tmp_path: Path) -> None:
    port = free_port()
    gw = start_gateway(tmp_path, default_config(port, tmp_path, stdio_upstream("echo", ECHO)), port)
    try:
        async with mcp_client(gw.url, KEYS["researcher"][2]) as client:
            assert (await client.list_tools()).tools == []  # research is granted nothing on echo
            with pytest.raises(MCPError) as hidden:
                await client.call_tool("echo__echo", {"text": "x"})
            with pytest.raises(MCPError) as missing:
                await client.call_tool("echo__no_such_tool", {"text": "x"})
            assert str(hidden.value).replace("echo__echo", "X") == str(missing.value).replace("echo__no_such_tool", "X")
        async with mcp_client(gw.url, KEYS["ci-bot"][2]) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert names and all(n.startswith("echo__") for n in names)  # ci is granted "*" on echo
    finally:
        gw.stop()
