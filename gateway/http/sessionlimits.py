"""``[[limits]]`` with ``sessions``: open 2025-era sessions per agent, refused at ``initialize`` with HTTP 429.

Counted where the sessions are: with ``[fleet]`` every session of an agent is on its owning replica (the fleet
stage forwards ``initialize`` there), so the owner's count is the fleet's. The answer names the limit and
carries ``Retry-After`` (a session is freed when the agent closes one or it expires).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import LIMITED
from gateway.fleet.config import LimitConfig
from gateway.http.authenticate import agent_of
from gateway.http.bodylimit import read_body, replay
from gateway.http.headers import headers_of
from gateway.http.respond import JSON, respond
from gateway.http.sessions import SessionBinding, initialize_of

RETRY_AFTER_S = 5


class SessionLimits:
    def __init__(
        self, app: ASGIApp, limits: list[LimitConfig], sessions: SessionBinding, on_limited: Callable[[str], None]
    ):
        self.app = app
        self.limits = [lim for lim in limits if lim.sessions is not None]
        self.sessions = sessions
        self.on_limited = on_limited

    @classmethod
    def wrap(cls, app: ASGIApp, gw: Any, sessions: SessionBinding) -> ASGIApp:
        """The stage when some limit bounds sessions; else ``app`` (one line in ``build_agent_app``)."""
        if not any(lim.sessions is not None for lim in gw.config.limits):
            return app
        return cls(app, gw.config.limits, sessions, lambda name: gw.metrics.limited.labels(name).inc())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST" or headers_of(scope).session_id is not None:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        receive = replay(body, receive)
        agent = agent_of(scope)
        matching = [
            lim
            for lim in self.limits
            if any(fnmatch.fnmatchcase(agent.id, g) for g in lim.agents)
            and any(fnmatch.fnmatchcase(agent.team, g) for g in lim.teams)
        ]
        if matching and initialize_of(body) is not None:
            held = self.sessions.held((agent.id, agent.auth, agent.team))
            for lim in matching:
                if lim.sessions is not None and held >= lim.sessions:
                    self.on_limited(lim.name)
                    message = (
                        f"limit {lim.name}: sessions = {lim.sessions} reached; close a session (DELETE) "
                        f"or retry after {RETRY_AFTER_S} s"
                    )
                    data = {"limit": lim.name, "bound": "sessions", "retry_after_s": RETRY_AFTER_S}
                    doc = {"jsonrpc": "2.0", "id": None, "error": {"code": LIMITED, "message": message, "data": data}}
                    await respond(send, 429, orjson.dumps(doc), JSON, [(b"retry-after", str(RETRY_AFTER_S).encode())])
                    return
        await self.app(scope, receive, send)
