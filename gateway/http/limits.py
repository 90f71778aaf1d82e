"""Per-agent request concurrency (``[server] max_concurrent_calls_per_agent``).

One agent, even one with no grants at all, cannot hold every worker and evaluator of the gateway: past its cap
of POSTs in flight it gets HTTP 429 with a JSON-RPC error naming the limit, counted, while other agents are
served. GET streams are not counted (they wait, they do not work); sessions have their own cap.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import LIMITED
from gateway.http.authenticate import agent_of
from gateway.http.respond import jsonrpc_error


class AgentConcurrency:
    def __init__(self, app: ASGIApp, max_per_agent: int, on_limited: Callable[[str], None]):
        if max_per_agent <= 0:
            raise ValueError("max_concurrent_calls_per_agent must be positive")
        self.app = app
        self.max_per_agent = max_per_agent
        self.on_limited = on_limited
        self.in_flight: dict[tuple[str, str, str], int] = {}
        self.message = (
            f"this agent already has {max_per_agent} requests in flight "
            "(server.max_concurrent_calls_per_agent): retry when one has finished"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        agent = agent_of(scope)
        key = (agent.id, agent.auth, agent.team)
        count = self.in_flight.get(key, 0)
        if count >= self.max_per_agent:
            self.on_limited("calls_per_agent")
            await jsonrpc_error(send, 429, LIMITED, self.message)
            return
        self.in_flight[key] = count + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self.in_flight[key] - 1
            if left:
                self.in_flight[key] = left
            else:
                del self.in_flight[key]
