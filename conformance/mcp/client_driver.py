"""The "client" the conformance suite's client scenarios run: the gateway, as the MCP client of a remote upstream.

The suite starts a test server and runs ``client_driver.py <server URL>`` with the scenario's name in
MCP_CONFORMANCE_SCENARIO. This starts a gateway whose only upstream is that URL (an HTTP upstream, so the gateway's
own connector is what the scenario judges), then drives it like an agent would: list the tools through the
gateway and call each of them. The gateway connects, initializes, lists, calls, resumes streams and so on by
itself; this script only makes the agent side happen, then stops the gateway.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import start_gateway


def _args_for(schema: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, prop in (schema.get("properties") or {}).items():
        kind = prop.get("type") if isinstance(prop, dict) else None
        out[name] = {"number": 2, "integer": 2, "boolean": True, "string": "x"}.get(str(kind), "x")
    return out


async def drive(port: int, admin_port: int) -> None:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    with anyio.move_on_after(10):  # the gateway starts even when its upstream is not reachable; give it a moment
        while True:
            async with httpx2.AsyncClient() as probe:
                if (await probe.get(f"http://127.0.0.1:{admin_port}/readyz")).status_code == 200:
                    break
            await anyio.sleep(0.1)
    http = httpx2.AsyncClient(timeout=20)
    url = f"http://127.0.0.1:{port}/mcp/fixture"
    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None) as client:
        tools = await client.list_tools()
        for tool in tools.tools:
            result = await client.call_tool(tool.name, _args_for(dict(tool.input_schema or {})))
            print(f"called {tool.name}: {result.content[:1]}", flush=True)


def main() -> int:
    url = sys.argv[-1]
    scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO", "?")
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
    env = {}
    # An upstream that needs a token: the gateway runs the OAuth flow itself (pre-registered when the scenario
    # hands out client credentials, else by client registration).
    oauth = "[upstreams.oauth]\n"
    if context.get("client_id"):
        oauth += f'client_id = "{context["client_id"]}"\n'
    if context.get("client_secret"):
        oauth += 'client_secret_env = "CONFORMANCE_CLIENT_SECRET"\n'
        env["CONFORMANCE_CLIENT_SECRET"] = str(context["client_secret"])
    with tempfile.TemporaryDirectory(prefix="conformance-client-") as tmp:
        workdir = Path(tmp)
        upstream = f'[[upstreams]]\nname = "fixture"\ntransport = "http"\nurl = "{url}"\nstart_timeout_s = 10\n{oauth}'
        gw, port = start_gateway(workdir, upstream, ready=False, env=env)
        try:
            anyio.run(drive, port, gw.admin_port)
        except Exception as exc:
            print(f"scenario {scenario}: {exc}", file=sys.stderr)
            print((workdir / "gateway.log").read_text()[-4000:], file=sys.stderr)
            return 1
        finally:
            gw.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
