"""Hidden equals missing for endpoints: ``/mcp/<upstream>`` of an upstream the agent may not see answers exactly as
``/mcp/<no such upstream>`` does (404), after authentication, so neither an agent nor an anonymous caller can tell
a hidden upstream from a missing one by its endpoint.

Whether the agent sees the upstream is the pipeline's business (``Pipeline.view_visible``: any of its items
visible to the agent, from the cached per-item list decisions); this middleware only asks and answers.
"""

from __future__ import annotations

from typing import Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import METHOD_NOT_FOUND
from gateway.http.authenticate import agent_of
from gateway.http.dispatch import VIEW_KEY
from gateway.http.respond import jsonrpc_error
from gateway.identity import Agent

_MISSING = "no such upstream on this gateway (the endpoint is /mcp or /mcp/<upstream>)"
"""The same bytes for every unknown or hidden upstream: the name the caller sent is not echoed either."""


class Views(Protocol):
    async def view_visible(self, agent: Agent, view: str) -> bool: ...


class ViewGate:
    def __init__(self, app: ASGIApp, views: set[str | None], pipeline: Views):
        self.app = app
        self.views = views
        self.pipeline = pipeline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        view = scope["state"][VIEW_KEY]
        if view is not None and (view not in self.views or not await self.pipeline.view_visible(agent_of(scope), view)):
            await jsonrpc_error(send, 404, METHOD_NOT_FOUND, _MISSING)
            return
        await self.app(scope, receive, send)
