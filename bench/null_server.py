"""An MCP server over streamable HTTP that does no work: a fixed answer to every request, in both eras.

The benchmark calls it with the same SDK client as every other path, so its latency is what the client and an
HTTP round trip cost by themselves: the part of a gateway's added latency (over a direct stdio connection) that
no gateway can remove.

    python bench/null_server.py PORT
"""

from __future__ import annotations

import sys
from typing import Any

import orjson
import uvicorn

_TOOL = {"name": "echo", "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}}
_CAPS = {"tools": {"listChanged": False}}
_INFO = {"name": "null", "version": "1"}


def _result(method: str, params: dict[str, Any]) -> dict[str, Any]:
    modern = "io.modelcontextprotocol/protocolVersion" in (params.get("_meta") or {})
    done: dict[str, Any] = {"resultType": "complete"} if modern else {}
    if method == "initialize":
        return {"protocolVersion": params.get("protocolVersion"), "capabilities": _CAPS, "serverInfo": _INFO}
    if method == "server/discover":
        return {"supportedVersions": ["2026-07-28"], "capabilities": _CAPS, "cacheScope": "private", "ttlMs": 0, **done}
    if method == "tools/list":
        return {"tools": [_TOOL], **done, **({"cacheScope": "private", "ttlMs": 0} if modern else {})}
    if method == "tools/call":
        text = str((params.get("arguments") or {}).get("text", ""))
        return {"content": [{"type": "text", "text": text}], "isError": False, **done}
    return {**done}


async def read_body(receive: Any) -> bytes:
    """A request's whole body, from its ASGI messages (also used by ``bench/null_proxy.py``)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = await read_body(receive)
    msg = orjson.loads(body) if scope["method"] == "POST" and body else None
    if not isinstance(msg, dict) or "id" not in msg:
        await send({"type": "http.response.start", "status": 202 if msg else 405, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    out = orjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": _result(msg["method"], msg.get("params") or {})})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
    if msg["method"] == "initialize":
        headers.append((b"mcp-session-id", b"null-session"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/null_server.py PORT")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
