"""The conformance fixture upstream: every tool, resource, prompt and utility the suite's server scenarios call.

Written on the SDK's low-level ``Server`` (not ``MCPServer``, which derives schemas from signatures and registers
no ``logging/setLevel`` or subscribe handlers), with handlers that return wire-shaped dicts so nothing is lost
to model round-trips (JSON Schema 2020-12 keywords, legacy ``enumNames``). Served over stdio (behind the
gateway, which launches it) or streamable HTTP (``--transport http --port N``, to run the suite against it
directly and compare).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import wave
from typing import Any

import anyio
from mcp.server import Server

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="


def _wav() -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 80)
    return base64.b64encode(buf.getvalue()).decode()


WAV = _wav()
LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]

_NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}}


def _tool(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "description": description, "inputSchema": schema or _NO_ARGS}


TOOLS = [
    _tool("test_simple_text", "Returns a simple text response."),
    _tool("test_image_content", "Returns a 1x1 PNG image."),
    _tool("test_audio_content", "Returns a short WAV clip."),
    _tool("test_embedded_resource", "Returns an embedded text resource."),
    _tool("test_multiple_content_types", "Returns text, an image and an embedded resource."),
    _tool("test_tool_with_logging", "Sends three log messages while it runs."),
    _tool("test_error_handling", "Always fails with isError."),
    _tool("test_tool_with_progress", "Reports progress 0, 50 and 100 of 100."),
    _tool(
        "test_sampling",
        "Asks the client to sample an LLM.",
        {"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]},
    ),
    _tool(
        "test_elicitation",
        "Asks the user for a username and an email.",
        {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
    ),
    _tool("test_elicitation_sep1034_defaults", "Elicitation whose schema has defaults for every primitive type."),
    _tool("test_elicitation_sep1330_enums", "Elicitation with all five enum schema variants."),
    _tool("test_reconnection", "Closes its SSE stream mid-call (HTTP only), then answers."),
    {
        "name": "json_schema_2020_12_tool",
        "description": "Tool with JSON Schema 2020-12 features",
        "inputSchema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {
                "address": {
                    "type": "object",
                    "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                }
            },
            "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
            "additionalProperties": False,
        },
    },
]

RESOURCES = [
    {
        "uri": "test://static-text",
        "name": "static-text",
        "description": "A static text resource.",
        "mimeType": "text/plain",
    },
    {
        "uri": "test://static-binary",
        "name": "static-binary",
        "description": "A static PNG image.",
        "mimeType": "image/png",
    },
    {
        "uri": "test://watched-resource",
        "name": "watched-resource",
        "description": "A resource to subscribe to.",
        "mimeType": "text/plain",
    },
]
TEMPLATES = [
    {
        "uriTemplate": "test://template/{id}/data",
        "name": "template-data",
        "description": "Data for an id.",
        "mimeType": "application/json",
    },
]
PROMPTS = [
    {"name": "test_simple_prompt", "description": "A prompt without arguments."},
    {
        "name": "test_prompt_with_arguments",
        "description": "A prompt with two arguments.",
        "arguments": [
            {"name": "arg1", "description": "First argument", "required": True},
            {"name": "arg2", "description": "Second argument", "required": True},
        ],
    },
    {
        "name": "test_prompt_with_embedded_resource",
        "description": "A prompt embedding a resource.",
        "arguments": [{"name": "resourceUri", "description": "URI of the resource to embed", "required": True}],
    },
    {"name": "test_prompt_with_image", "description": "A prompt with an image."},
]

ELICIT_1034 = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "default": "John Doe"},
        "age": {"type": "integer", "default": 30},
        "score": {"type": "number", "default": 95.5},
        "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
        "verified": {"type": "boolean", "default": True},
    },
}
ELICIT_1330 = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {
            "type": "string",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
        "titledMulti": {
            "type": "array",
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
}

# Per-connection state (log level, subscriptions), keyed by the SDK connection object.
_state: dict[int, dict[str, Any]] = {}


def _conn_state(ctx: Any) -> dict[str, Any]:
    conn = getattr(ctx.session, "_connection", None)
    return _state.setdefault(id(conn), {"level": "debug", "subscriptions": set()})


def _text(text: str, **extra: Any) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], **extra}


async def _ask(ctx: Any, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """A server-to-client request on this call's own channel (its POST stream on HTTP), as raw dicts."""
    channel = getattr(ctx.session, "_request_outbound", None)
    if channel is None:
        raise RuntimeError("no back-channel for server-to-client requests")
    return await channel.send_raw_request(method, params)


async def _log(ctx: Any, level: str, message: str) -> None:
    if LEVELS.index(level) < LEVELS.index(_conn_state(ctx)["level"]):
        return
    channel = getattr(ctx.session, "_request_outbound", None)
    if channel is not None:
        await channel.notify("notifications/message", {"level": level, "logger": "fixture", "data": message})


async def list_tools(ctx: Any, params: Any) -> dict[str, Any]:
    return {"tools": TOOLS}


async def call_tool(ctx: Any, params: Any) -> dict[str, Any]:
    name = params.name
    args = params.arguments or {}
    if name == "test_simple_text":
        return _text("This is a simple text response for testing.")
    if name == "test_image_content":
        return {"content": [{"type": "image", "data": PNG, "mimeType": "image/png"}]}
    if name == "test_audio_content":
        return {"content": [{"type": "audio", "data": WAV, "mimeType": "audio/wav"}]}
    if name == "test_embedded_resource":
        return {
            "content": [
                {
                    "type": "resource",
                    "resource": {
                        "uri": "test://embedded-resource",
                        "mimeType": "text/plain",
                        "text": "This is an embedded resource content.",
                    },
                }
            ]
        }
    if name == "test_multiple_content_types":
        return {
            "content": [
                {"type": "text", "text": "Multiple content types test:"},
                {"type": "image", "data": PNG, "mimeType": "image/png"},
                {
                    "type": "resource",
                    "resource": {
                        "uri": "test://mixed-content-resource",
                        "mimeType": "application/json",
                        "text": json.dumps({"test": "data", "value": 123}),
                    },
                },
            ]
        }
    if name == "test_tool_with_logging":
        await _log(ctx, "info", "Tool execution started")
        await anyio.sleep(0.05)
        await _log(ctx, "info", "Tool processing data")
        await anyio.sleep(0.05)
        await _log(ctx, "info", "Tool execution completed")
        return _text("Tool with logging executed successfully")
    if name == "test_error_handling":
        return _text("This tool intentionally returns an error for testing", isError=True)
    if name == "test_tool_with_progress":
        token = (ctx.meta or {}).get("progress_token")
        for step in (0, 50, 100):
            if token is not None:
                await ctx.session.send_progress_notification(
                    token, step, 100, f"{step}%", related_request_id=ctx.request_id
                )
            if step < 100:
                await anyio.sleep(0.05)
        return _text("Tool with progress executed successfully")
    if name == "test_sampling":
        result = await _ask(
            ctx,
            "sampling/createMessage",
            {
                "messages": [{"role": "user", "content": {"type": "text", "text": str(args.get("prompt", ""))}}],
                "maxTokens": 100,
            },
        )
        content = result.get("content") or {}
        text = content.get("text") if isinstance(content, dict) else json.dumps(content)
        return _text(f"LLM response: {text}")
    if name == "test_elicitation":
        result = await _ask(
            ctx,
            "elicitation/create",
            {
                "message": str(args.get("message", "")),
                "requestedSchema": {
                    "type": "object",
                    "properties": {
                        "username": {"type": "string", "description": "User's response"},
                        "email": {"type": "string", "description": "User's email address"},
                    },
                    "required": ["username", "email"],
                },
            },
        )
        return _text(f"User response: action={result.get('action')}, content={json.dumps(result.get('content'))}")
    if name in ("test_elicitation_sep1034_defaults", "test_elicitation_sep1330_enums"):
        schema = ELICIT_1034 if name.endswith("defaults") else ELICIT_1330
        result = await _ask(
            ctx, "elicitation/create", {"message": "Please review these fields", "requestedSchema": schema}
        )
        return _text(
            f"Elicitation completed: action={result.get('action')}, content={json.dumps(result.get('content'))}"
        )
    if name == "test_reconnection":
        await anyio.sleep(0.05)
        if ctx.close_sse_stream is not None:
            await ctx.close_sse_stream()
        await anyio.sleep(0.2)
        return _text("Reconnection test completed")
    if name == "json_schema_2020_12_tool":
        return _text(f"Received: {json.dumps(args)}")
    return _text(f"Unknown tool: {name}", isError=True)


async def list_resources(ctx: Any, params: Any) -> dict[str, Any]:
    return {"resources": RESOURCES}


async def list_templates(ctx: Any, params: Any) -> dict[str, Any]:
    return {"resourceTemplates": TEMPLATES}


async def read_resource(ctx: Any, params: Any) -> dict[str, Any]:
    uri = str(params.uri)
    if uri == "test://static-text":
        return {
            "contents": [
                {"uri": uri, "mimeType": "text/plain", "text": "This is the content of the static text resource."}
            ]
        }
    if uri == "test://static-binary":
        return {"contents": [{"uri": uri, "mimeType": "image/png", "blob": PNG}]}
    if uri == "test://watched-resource":
        return {"contents": [{"uri": uri, "mimeType": "text/plain", "text": "Watched resource content."}]}
    prefix, suffix = "test://template/", "/data"
    if uri.startswith(prefix) and uri.endswith(suffix) and len(uri) > len(prefix) + len(suffix):
        ident = uri[len(prefix) : -len(suffix)]
        body = {"id": ident, "templateTest": True, "data": f"Data for ID: {ident}"}
        return {"contents": [{"uri": uri, "mimeType": "application/json", "text": json.dumps(body)}]}
    from mcp.shared.exceptions import MCPError

    raise MCPError(-32002, f"Resource not found: {uri}")


async def subscribe(ctx: Any, params: Any) -> dict[str, Any]:
    _conn_state(ctx)["subscriptions"].add(str(params.uri))
    return {}


async def unsubscribe(ctx: Any, params: Any) -> dict[str, Any]:
    _conn_state(ctx)["subscriptions"].discard(str(params.uri))
    return {}


async def list_prompts(ctx: Any, params: Any) -> dict[str, Any]:
    return {"prompts": PROMPTS}


async def get_prompt(ctx: Any, params: Any) -> dict[str, Any]:
    args = params.arguments or {}
    name = params.name
    if name == "test_simple_prompt":
        return {
            "messages": [{"role": "user", "content": {"type": "text", "text": "This is a simple prompt for testing."}}]
        }
    if name == "test_prompt_with_arguments":
        text = f"Prompt with arguments: arg1='{args.get('arg1')}', arg2='{args.get('arg2')}'"
        return {"messages": [{"role": "user", "content": {"type": "text", "text": text}}]}
    if name == "test_prompt_with_embedded_resource":
        return {
            "messages": [
                {
                    "role": "user",
                    "content": {
                        "type": "resource",
                        "resource": {
                            "uri": str(args.get("resourceUri", "test://example-resource")),
                            "mimeType": "text/plain",
                            "text": "Embedded resource content for testing.",
                        },
                    },
                },
                {"role": "user", "content": {"type": "text", "text": "Please process the embedded resource above."}},
            ]
        }
    if name == "test_prompt_with_image":
        return {
            "messages": [
                {"role": "user", "content": {"type": "image", "data": PNG, "mimeType": "image/png"}},
                {"role": "user", "content": {"type": "text", "text": "Please analyze the image above."}},
            ]
        }
    from mcp.shared.exceptions import MCPError

    raise MCPError(-32602, f"Unknown prompt: {name}")


async def complete(ctx: Any, params: Any) -> dict[str, Any]:
    value = params.argument.value or ""
    words = ["paris", "park", "party", "test", "testing", "tested"]
    values = [w for w in words if w.startswith(value)]
    return {"completion": {"values": values, "total": len(values), "hasMore": False}}


async def set_level(ctx: Any, params: Any) -> dict[str, Any]:
    _conn_state(ctx)["level"] = str(params.level)
    return {}


def build() -> Server[Any]:
    import mcp.types as types

    server: Server[Any] = Server(
        "conformance-fixture",
        version="1.0.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,  # type: ignore[arg-type]
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,  # type: ignore[arg-type]
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,  # type: ignore[arg-type]
        on_unsubscribe_resource=unsubscribe,
        on_list_prompts=list_prompts,  # type: ignore[arg-type]
        on_get_prompt=get_prompt,
        on_completion=complete,  # type: ignore[arg-type]
    )
    # Registered directly: the constructor keyword warns that logging is deprecated in the newest era.
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    return server


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    p.add_argument("--port", type=int, default=9100)
    args = p.parse_args()
    server = build()
    if args.transport == "stdio":
        from mcp.server.stdio import stdio_server

        async def run() -> None:
            async with stdio_server() as (r, w):
                await server.run(r, w, server.create_initialization_options())

        anyio.run(run)
    else:
        import uvicorn

        app = server.streamable_http_app(streamable_http_path="/mcp")
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
