"""The agent-facing MCP front end, built on the SDK's low-level server (both protocol eras, sessions, SSE).

It is an adapter only: it turns an SDK request context into a pipeline ``Request`` and the pipeline's
raw-dict results and ``GatewayError`` into what the SDK sends. Handlers return dicts, so forwarded results
are not re-validated.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server import Server
from mcp.server.caching import CacheHint
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway.decide import Request
from gateway.forward import GatewayError
from gateway.identity import Agent
from gateway.pipeline import Pipeline

AGENT_KEY = "gateway.agent"
VERSION = "0.1.0"


def agent_of(ctx: ServerRequestContext[Any, Any]) -> Agent:
    request = ctx.request
    agent = request.scope.get("state", {}).get(AGENT_KEY) if request is not None else None
    if not isinstance(agent, Agent):
        # The HTTP front end authenticates every request before the SDK sees it; reaching here without an
        # agent means the server was mounted without it. Refuse rather than guess.
        raise MCPError(-32001, "no authenticated agent on this request")
    return agent


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
        session_id=request.headers.get("mcp-session-id") if request is not None else None,
        client=client,
        protocol_version=ctx.protocol_version,
        request_id=ctx.request_id,
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
    meta = ctx.meta or {}
    token = meta.get("progress_token", meta.get("progressToken"))  # type: ignore[call-overload]
    if token is None:
        return None

    async def relay(params: dict[str, Any]) -> None:
        await ctx.session.send_progress_notification(
            token,
            float(params.get("progress", 0)),
            params.get("total"),
            params.get("message"),
            related_request_id=str(ctx.request_id) if ctx.request_id is not None else None,
        )

    return relay


def build_server(pipeline: Pipeline, view: str | None) -> Server[Any]:
    """One MCP server: the aggregate (``view`` None) or a single upstream under its own names."""

    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        return await pipeline.list_tools(make_request(ctx, "tools/list", view))

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        raw = ctx.params or {}
        args = raw.get("arguments")
        req = make_request(ctx, "tools/call", view, name=str(raw.get("name", "")), arguments=args or {})
        return await pipeline.call_tool(req, _progress_relay(ctx))

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
    return Server(
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
