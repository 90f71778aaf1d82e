"""The agent-facing MCP front end, built on the SDK's low-level server (both protocol eras, sessions, SSE).

It is an adapter only: it turns an SDK request context into a pipeline ``Request`` and the pipeline's
raw-dict results and ``GatewayError`` into what the SDK sends. Handlers return dicts, so forwarded results
are not re-validated.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as types
from mcp.server.caching import CacheHint
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from connectors.jsonrpc import RemoteError
from gateway import sdk_adapter
from gateway.decide import Request
from gateway.errors import DENIED
from gateway.forward import GatewayError
from gateway.http.authenticate import AGENT_KEY
from gateway.http.headers import HEADERS_KEY
from gateway.http.sessions import hand_over
from gateway.identity import Agent
from gateway.mailbox import PROGRESS_CAPACITY, Mailbox
from gateway.pipeline import Pipeline
from gateway.relay import AgentSession

log = logging.getLogger("gateway.frontend")

VERSION = "0.1.0"


def agent_of(ctx: ServerRequestContext[Any, Any]) -> Agent:
    request = ctx.request
    agent = request.scope.get("state", {}).get(AGENT_KEY) if request is not None else None
    if not isinstance(agent, Agent):
        # The HTTP front end authenticates every request before the SDK sees it; reaching here without an
        # agent means the server was mounted without it. Refuse rather than guess.
        raise MCPError(DENIED, "no authenticated agent on this request")
    return agent


def _recordable_id(rid: Any) -> Any:
    """JSON-RPC allows integer ids of any size; the audit log and policy input take 64-bit ones, so text beyond."""
    if isinstance(rid, int) and not -(2**63) <= rid < 2**64:
        return str(rid)
    return rid


def _session_id(scope: Any) -> str | None:
    """The Mcp-Session-Id the HTTP front end parsed (one value: a duplicated header was refused with 400)."""
    headers = scope.get("state", {}).get(HEADERS_KEY)
    return headers.session_id if headers is not None else None


def make_request(ctx: ServerRequestContext[Any, Any], action: str, view: str | None, **fields: Any) -> Request:
    request = ctx.request
    client: dict[str, Any] = {}
    params = ctx.session.client_params
    if params is not None and params.client_info is not None:
        client = {"name": params.client_info.name, "version": params.client_info.version}
    return Request(
        agent=agent_of(ctx),
        action=action,
        view=view,
        session_id=_session_id(request.scope) if request is not None else None,
        client=client,
        protocol_version=ctx.protocol_version,
        request_id=_recordable_id(ctx.request_id),
        remote_addr=request.client.host if request is not None and request.client else None,
        **fields,
    )


Handler = Callable[[ServerRequestContext[Any, Any], Any], Awaitable[dict[str, Any]]]


def _guard(fn: Handler) -> Handler:
    async def wrapped(ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        try:
            result = await fn(ctx, params)
        except GatewayError as exc:
            raise MCPError(exc.code, exc.message, exc.data) from None
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            result.setdefault("resultType", "complete")
        return result

    return wrapped


def _progress_relay(ctx: ServerRequestContext[Any, Any]) -> Any:
    meta: Any = ctx.meta or {}
    token: str | int | None = meta.get("progress_token", meta.get("progressToken"))
    if token is None:
        return None

    async def relay(method: str, params: dict[str, Any]) -> None:
        try:
            await ctx.session.send_progress_notification(
                token,
                float(params.get("progress", 0)),
                params.get("total"),
                params.get("message"),
                related_request_id=str(ctx.request_id) if ctx.request_id is not None else None,
            )
        except Exception as exc:  # progress to a client that went away is dropped, never raised
            log.debug("dropped progress to an agent session: %s", exc)

    return relay


def build_server(pipeline: Pipeline, view: str | None) -> Server[Any]:
    """One MCP server: the aggregate (``view`` None) or a single upstream under its own names."""

    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        return await pipeline.list_tools(make_request(ctx, "tools/list", view))

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        raw = ctx.params or {}
        args = raw.get("arguments")
        req = make_request(ctx, "tools/call", view, name=str(raw.get("name", "")), arguments=args or {})
        send = _progress_relay(ctx)
        if send is None:
            return await pipeline.call_tool(req)
        # Progress goes out through a bounded mailbox, not from the upstream's reader: an agent that stops reading
        # its stream must not hold up that reader (a shared upstream's serves every agent) nor pile up messages.
        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            box = Mailbox(send, tg.start_soon, pipeline.relay.dropped, PROGRESS_CAPACITY)

            async def on_progress(params: dict[str, Any]) -> None:
                box.put("notifications/progress", params)

            try:
                result = await pipeline.call_tool(req, on_progress)
                await box.drain()  # the progress that came before the answer goes before it
            except Exception as exc:  # raised after the task group, which would wrap it in an ExceptionGroup
                error = exc
            finally:
                box.close()
        if error is not None:
            raise error
        return result

    async def list_prompts(ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        return await pipeline.list_prompts(make_request(ctx, "prompts/list", view))

    async def get_prompt(ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        raw = ctx.params or {}
        req = make_request(ctx, "prompts/get", view, name=str(raw.get("name", "")), arguments=raw.get("arguments"))
        return await pipeline.get_prompt(req)

    async def list_resources(ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        return await pipeline.list_resources(make_request(ctx, "resources/list", view))

    async def list_templates(ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        return await pipeline.list_resource_templates(make_request(ctx, "resources/list", view))

    async def read_resource(ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        raw = ctx.params or {}
        return await pipeline.read_resource(make_request(ctx, "resources/read", view, uri=str(raw.get("uri", ""))))

    # Lists are filtered per agent: a client may cache them, but never share them across identities.
    private = CacheHint(ttl_ms=0, scope="private")
    hints = {m: private for m in ("tools/list", "prompts/list", "resources/list", "resources/templates/list")}
    server: Server[Any] = Server(
        "mcp-gateway" if view is None else view,
        version=VERSION,
        cache_hints=hints,  # type: ignore[arg-type]
        on_list_tools=_guard(list_tools),  # type: ignore[arg-type]
        on_call_tool=_guard(call_tool),  # type: ignore[arg-type]
        on_list_prompts=_guard(list_prompts),  # type: ignore[arg-type]
        on_get_prompt=_guard(get_prompt),  # type: ignore[arg-type]
        on_list_resources=_guard(list_resources),  # type: ignore[arg-type]
        on_list_resource_templates=_guard(list_templates),  # type: ignore[arg-type]
        on_read_resource=_guard(read_resource),  # type: ignore[arg-type]
    )
    install_relay(server, pipeline, view)
    return server


# --- server-to-client relaying (see gateway/relay.py) ------------------------------------------------------

_TRACKED = frozenset({"tools/call", "prompts/get", "resources/read", "completion/complete"})


class _Outlet:
    """A session's ways to its agent: the streams of its calls in flight, else its standalone stream.

    Uses the SDK's per-connection and per-request channels (``sdk_adapter.connection_of`` and
    ``request_channel``): raw dicts both ways, so relayed messages are not re-validated or reshaped.
    """

    def __init__(self, connection: Any):
        self.connection = connection
        self.inflight: list[tuple[str | None, Any]] = []

    def _channel(self, upstream: str | None) -> Any:
        for name, channel in reversed(self.inflight):
            if (upstream is None or name is None or name == upstream) and channel.can_send_request:
                return channel
        return None

    async def request(self, upstream: str, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        channel = self._channel(upstream) or self.connection.outbound
        try:
            return dict(await channel.send_raw_request(method, params, {"timeout": timeout}))
        except MCPError as exc:
            raise RemoteError(exc.code, exc.message, exc.data) from None

    async def notify(self, upstream: str | None, method: str, params: dict[str, Any]) -> None:
        channel = self._channel(upstream) if upstream is not None else None
        try:
            if channel is not None:
                await channel.notify(method, params)
            else:
                await self.connection.notify(method, params)
        except Exception as exc:  # a notification to a client that went away is dropped, never raised
            log.debug("dropped %s to an agent session: %s", method, exc)


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True) if model is not None else {}


def install_relay(server: Server[Any], pipeline: Pipeline, view: str | None) -> None:
    """Handlers for logging, subscriptions and completion, and a middleware that registers each 2025-era agent
    session with the relay (closing its upstream sessions when it ends) and tracks its calls in flight."""
    relay, catalog = pipeline.relay, pipeline.catalog

    def session_of(ctx: ServerRequestContext[Any, Any]) -> AgentSession | None:
        connection = sdk_adapter.connection_of(ctx.session)
        sid = getattr(connection, "session_id", None)
        if connection is None or sid is None or ctx.method == "initialize":
            return None
        session = relay.sessions.get(sid)
        if session is None:
            request = ctx.request
            agent = request.scope.get("state", {}).get(AGENT_KEY) if request is not None else None
            if not isinstance(agent, Agent):
                return None
            info = ctx.session.client_params.client_info if ctx.session.client_params is not None else None
            session = relay.open(
                AgentSession(
                    sid,
                    agent,
                    view,
                    _Outlet(connection),
                    capabilities=_dump(ctx.session.client_capabilities),
                    client={"name": info.name, "version": info.version} if info is not None else {},
                    protocol_version=ctx.protocol_version,
                )
            )
            connection.exit_stack.push_async_callback(relay.close, sid)
        return session

    def upstream_of(method: str, params: Any) -> str | None:
        if view is not None:
            return view
        up = None
        if method in ("tools/call", "prompts/get"):
            up = catalog.split(str(params.get("name", "")), None)[0]
        elif method == "resources/read":
            up = catalog.resource_owner(str(params.get("uri", "")), None)
        return up.name if up is not None else None

    async def middleware(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        result = await route(ctx, call_next)
        if ctx.request_id is None or ctx.request is None:
            return result
        return hand_over(ctx.request.scope.get("state"), result)

    async def route(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        session = session_of(ctx)
        if session is None:
            return await call_next(ctx)
        if ctx.request_id is None:
            if ctx.method == "notifications/roots/list_changed":
                await pipeline.roots_changed(session)
            return await call_next(ctx)
        if ctx.method not in _TRACKED:
            return await call_next(ctx)
        outlet = session.outlet
        assert isinstance(outlet, _Outlet)
        entry = (upstream_of(ctx.method, ctx.params or {}), sdk_adapter.request_channel(ctx.session))
        if entry[1] is None:
            return await call_next(ctx)
        outlet.inflight.append(entry)
        try:
            return await call_next(ctx)
        finally:
            outlet.inflight.remove(entry)

    async def complete(ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        return await pipeline.complete(make_request(ctx, "completion/complete", view), dict(ctx.params or {}))

    async def subscribe(ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        uri = str((ctx.params or {}).get("uri", ""))
        return await pipeline.subscribe(make_request(ctx, "resources/subscribe", view, uri=uri))

    async def unsubscribe(ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        uri = str((ctx.params or {}).get("uri", ""))
        return await pipeline.unsubscribe(make_request(ctx, "resources/unsubscribe", view, uri=uri))

    async def set_level(ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        level = str((ctx.params or {}).get("level", ""))
        return await pipeline.set_log_level(make_request(ctx, "logging/setLevel", view), level)

    server.middleware.append(middleware)
    server.add_request_handler("completion/complete", types.CompleteRequestParams, _guard(complete))
    server.add_request_handler("resources/subscribe", types.SubscribeRequestParams, _guard(subscribe))
    server.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, _guard(unsubscribe))
    # Registered directly: the constructor keyword warns that logging is deprecated in the newest era.
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, _guard(set_level))
    # Upstream lists change and the gateway says so (notifications/*/list_changed go to every session).
    server.create_initialization_options = functools.partial(  # type: ignore[method-assign]
        server.create_initialization_options, NotificationOptions(True, True, True)
    )
