"""Remote upstream MCP servers over streamable HTTP.

The connector keeps one MCP session with the server, reconnects with backoff when the server is unreachable
(the gateway starts anyway and reports the upstream as down), and re-initializes when the server forgets the
session (HTTP 404). Responses may be plain JSON or an SSE stream; every message on the stream is dispatched,
so progress notifications and server-to-client requests reach the gateway while the call runs.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.abc
import httpx2
import orjson

from connectors.jsonrpc import JsonRpcPeer, UpstreamError

log = logging.getLogger("gateway.upstream")


class HttpConnector(JsonRpcPeer):
    def __init__(
        self,
        name: str,
        url: str,
        headers: dict[str, str] | None = None,
        start_timeout: float = 30.0,
        on_state: Any = None,
    ):
        super().__init__(name)
        self.url = url
        self._headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            **(headers or {}),
        }
        self.start_timeout = start_timeout
        self.on_state = on_state
        self._client = httpx2.AsyncClient(timeout=httpx2.Timeout(None, connect=5.0), follow_redirects=False)
        self._session_id: str | None = None
        self._ready = anyio.Event()
        self._reconnect = anyio.Event()
        self._stopping = False
        self.last_error = "not connected yet"

    @property
    def up(self) -> bool:
        return self._ready.is_set()

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(self._supervise)

    async def wait_ready(self, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            await self._ready.wait()
        return self._ready.is_set()

    async def _supervise(self) -> None:
        backoff = 0.2
        while not self._stopping:
            try:
                await self._connect()
                backoff = 0.2
                if self.on_state:
                    self.on_state(self, True)
                await self._reconnect.wait()
                self._reconnect = anyio.Event()
            except UpstreamError as exc:
                self.last_error = exc.detail
                log.warning("upstream %s: %s; retrying in %.1f s", self.name, exc.detail, backoff)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _connect(self) -> None:
        self._session_id = None
        with anyio.fail_after(self.start_timeout):
            result = await JsonRpcPeer.request(self, "initialize", self._initialize_params(), self.start_timeout)
        self._adopt(result)
        await self.notify("notifications/initialized")
        self.last_error = ""
        self._ready.set()

    def _mark_down(self, why: str) -> None:
        if self._ready.is_set():
            self._ready = anyio.Event()
            self.last_error = why
            if self.on_state:
                self.on_state(self, False)
            self._reconnect.set()

    async def request(self, method: str, params: dict[str, Any] | None, timeout: float, on_progress: Any = None):
        if not self._ready.is_set():
            raise UpstreamError(self.name, "unavailable", f"is not reachable ({self.last_error})")
        return await super().request(method, params, timeout, on_progress)

    async def _send(self, message: dict[str, Any]) -> None:
        headers = dict(self._headers)
        if self._session_id:
            headers["Mcp-Session-Id"] = self._session_id
        if message.get("method") != "initialize":
            headers["MCP-Protocol-Version"] = self.protocol_version
        try:
            async with self._client.stream("POST", self.url, content=orjson.dumps(message), headers=headers) as resp:
                if resp.status_code == 404 and self._session_id:
                    self._mark_down("the server ended the session")
                    raise UpstreamError(self.name, "unavailable", "ended the session; reconnecting")
                if resp.status_code >= 400:
                    body = (await resp.aread())[:500].decode("utf-8", "replace")
                    raise UpstreamError(self.name, "protocol", f"answered HTTP {resp.status_code}: {body}")
                sid = resp.headers.get("mcp-session-id")
                if sid and message.get("method") == "initialize":
                    self._session_id = sid
                if "id" not in message or "method" not in message or resp.status_code == 202:
                    return
                ctype = resp.headers.get("content-type", "")
                if ctype.startswith("text/event-stream"):
                    await self._read_sse(resp)
                else:
                    await self._dispatch(orjson.loads(await resp.aread()))
        except httpx2.TransportError as exc:
            self._mark_down(f"connection failed: {exc.__class__.__name__}")
            raise UpstreamError(self.name, "unavailable", f"is not reachable: {exc.__class__.__name__}") from None
        except orjson.JSONDecodeError:
            raise UpstreamError(self.name, "protocol", "sent a body that is not JSON") from None

    async def _read_sse(self, resp: httpx2.Response) -> None:
        data: list[str] = []
        async for line in resp.aiter_lines():
            if line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif line == "" and data:
                payload = "\n".join(data)
                data = []
                try:
                    await self._dispatch(orjson.loads(payload))
                except orjson.JSONDecodeError:
                    log.warning("upstream %s sent an SSE event that is not JSON; ignored", self.name)

    async def aclose(self) -> None:
        self._stopping = True
        self._reconnect.set()
        if self._session_id:
            with anyio.move_on_after(1):
                try:
                    await self._client.delete(self.url, headers={**self._headers, "Mcp-Session-Id": self._session_id})
                except httpx2.HTTPError:
                    pass
        await self._client.aclose()
