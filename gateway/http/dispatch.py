"""The one place that picks the path of an MCP request: the gateway's fast path or the SDK's transport.

The fast path (``gateway/fastpath.py``) answers a plain ``tools/call``: on an established 2025-era session it
holds, or a self-consistent 2026-era request (headers agree with the body). Everything else, and anything the
fast path declines, goes to the SDK's streamable-HTTP transport of the request's view, unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.types import Message, Receive, Scope, Send

from gateway import sdk_adapter, stages
from gateway.fastpath import FastPath, modern_client, parse_tool_call
from gateway.http.authenticate import agent_of
from gateway.http.headers import headers_of
from gateway.http.sessions import BODY_KEY, SESSION_KEY, BoundSession

VIEW_KEY = "gateway.view"
SdkApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def view_of(scope: Scope) -> str | None:
    view: str | None = scope["state"][VIEW_KEY]
    return view


class Detachable:
    """A request's ``receive`` and ``send`` as the SDK sees them, cut from the connection once the request is over
    (a later ``receive`` reads a disconnect, a later ``send`` is dropped).

    Why: the SDK's per-session message router keeps the last message it routed alive until the next one, and with
    it the request that message came on, which holds these. Uncut, an idle session kept its last POST's connection
    alive after the client closed it: uvicorn's protocol, parser and buffers, some 10 KB a session.
    """

    __slots__ = ("_receive", "_send")

    def __init__(self, receive: Receive, send: Send):
        self._receive: Receive | None = receive
        self._send: Send | None = send

    async def receive(self) -> Message:
        receive = self._receive
        if receive is None:
            return {"type": "http.disconnect"}
        return await receive()

    async def send(self, message: Message) -> None:
        send = self._send
        if send is not None:
            await send(message)

    def release(self) -> None:
        self._receive = self._send = None


class Dispatch:
    def __init__(self, fast: FastPath, sdk_apps: dict[str | None, SdkApp]):
        self.fast = fast
        self.sdk_apps = sdk_apps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["state"]
        view = state[VIEW_KEY]
        body: bytes | None = state.get(BODY_KEY)
        if body is not None:
            headers = headers_of(scope)
            sid = headers.session_id
            msg = parse_tool_call(body)
            stages.mark("parse")
            if msg is not None:
                client = scope.get("client")
                remote = client[0] if client else None
                if sid is None:
                    info = modern_client(msg, headers)
                    if info is not None and await self.fast.handle(
                        msg, agent_of(scope), view, None, info, headers.protocol_version, remote, receive, send
                    ):
                        return
                else:
                    session: BoundSession | None = state.get(SESSION_KEY)
                    if session is not None and await self.fast.handle(
                        msg,
                        agent_of(scope),
                        view,
                        sid,
                        session.client,
                        session.protocol_version,
                        remote,
                        receive,
                        send,
                    ):
                        return
            elif sid is not None:
                self.fast.cancel(sid, body)
        cut = Detachable(receive, sdk_adapter.scrub_transport_errors(send))
        try:
            await self.sdk_apps[view](scope, cut.receive, cut.send)
        finally:
            cut.release()
