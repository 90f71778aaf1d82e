"""An agent's answer to a server-to-client request holding an integer beyond 64 bits cannot be written to the
upstream as it is (orjson refuses it, and nothing must convert it): the upstream gets a JSON-RPC error at once,
rather than no answer at all (its call hung until a timeout)."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from tests.test_protocol_relay import client, gateway

__all__ = ["gateway"]

pytestmark = pytest.mark.anyio


async def test_an_answer_holding_an_integer_beyond_64_bits_is_refused_to_the_upstream(gateway: Any) -> None:
    async def elicit(ctx: Any, params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"untitledSingle": 2**70})

    async with client(gateway.url + "/fixture", "ci-bot", elicitation_callback=elicit) as c:
        with pytest.raises(MCPError) as err:  # the fixture's call fails on the error it got, and says why
            await c.call_tool("test_elicitation_sep1330_enums", {})
    assert "cannot forward exactly (an integer beyond 64 bits)" in str(err.value), err.value
