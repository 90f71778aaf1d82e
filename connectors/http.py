"""Remote upstream MCP servers over streamable HTTP.

The connector keeps one MCP session with the server, reconnects with backoff when the server is unreachable
(the gateway starts anyway and reports the upstream as down), and re-initializes when the server forgets the
session (HTTP 404). Responses may be plain JSON or an SSE stream; every message on the stream is dispatched,
so progress notifications and server-to-client requests reach the gateway while the call runs. A stream that
ends before its response is resumed with a GET and ``Last-Event-ID`` after the server's ``retry`` delay
(SEP-1699), and a standalone GET stream carries what the server sends outside calls (list changes, resource
updates), when the server offers one.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.abc
import httpx2
import orjson
from mcp.client.auth.exceptions import OAuthFlowError

from connectors.jsonrpc import JsonRpcPeer, UpstreamError

log = logging.getLogger("gateway.upstream")

_DEFAULT_RETRY_S = 1.0
_MAX_RESUMES = 5


class HttpConnector(JsonRpcPeer):
    def __init__(
        self,
        name: str,
        url: str,
        headers: dict[str, str] | None = None,
        start_timeout: float = 30.0,
        on_state: Any = None,
        auth: httpx2.Auth | None = None,
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
        self._client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(None, connect=5.0), follow_redirects=False, auth=auth
        )
        self._session_id: str | None = None
        self._ready = anyio.Event()
        self._reconnect = anyio.Event()
        self._stopping = False
        self._attempted = anyio.Event()
        """Set once the first connection attempt has ended, either way: until then a request waits for it."""
        self._listener: anyio.CancelScope | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self.last_error = "not connected yet"

    @property
    def up(self) -> bool:
        return self._ready.is_set()

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        self._spawn = tg.start_soon
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
                self._attempted.set()
                if self.on_state:
                    self.on_state(self, True)
                if self._tg is not None:
                    self._tg.start_soon(self._listen)
                await self._reconnect.wait()
                self._reconnect = anyio.Event()
                if self._listener is not None:
                    self._listener.cancel()
            except Exception as exc:  # whatever the upstream does, the gateway keeps running and retries
                self.last_error = exc.detail if isinstance(exc, UpstreamError) else f"{exc.__class__.__name__}: {exc}"
                self._attempted.set()
                log.warning("upstream %s: %s; retrying in %.1f s", self.name, self.last_error, backoff)
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
            if not self._attempted.is_set():  # still connecting for the first time (a per-session connection)
                with anyio.move_on_after(min(timeout, self.start_timeout)):
                    await self._ready.wait()
            if not self._ready.is_set():
                raise UpstreamError(self.name, "unavailable", f"is not reachable ({self.last_error})")
        return await super().request(method, params, timeout, on_progress)

    def _session_headers(self, versioned: bool = True) -> dict[str, str]:
        """The headers of a request in this session (the protocol version once it has been negotiated)."""
        headers = dict(self._headers)
        if self._session_id:
            headers["Mcp-Session-Id"] = self._session_id
        if versioned:
            headers["MCP-Protocol-Version"] = self.protocol_version
        return headers

    async def _send(self, message: dict[str, Any]) -> None:
        resume: tuple[str, float] | None = None
        headers = self._session_headers(versioned=message.get("method") != "initialize")
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
                    last_id, retry = await self._read_sse(resp)
                    if self._waiting(message["id"]):
                        if last_id is None:  # nothing to resume from: the answer will never come
                            raise UpstreamError(self.name, "protocol", f"ended the stream of {message['method']} "
                                                "without answering it")
                        resume = (last_id, retry)
                else:
                    await self._dispatch(orjson.loads(await resp.aread()))
                    if self._waiting(message["id"]):
                        raise UpstreamError(self.name, "protocol", f"answered {message['method']} with JSON that "
                                            "is not its response")
            if resume is not None:
                await self._resume(message["id"], *resume)
        except httpx2.TransportError as exc:
            self._mark_down(f"connection failed: {exc.__class__.__name__}")
            raise UpstreamError(self.name, "unavailable", f"is not reachable: {exc.__class__.__name__}") from None
        except orjson.JSONDecodeError:
            raise UpstreamError(self.name, "protocol", "sent a body that is not JSON") from None
        except (OAuthFlowError, ValueError, RuntimeError) as exc:  # the OAuth flow (see connectors.oauth) failed
            raise UpstreamError(self.name, "unauthorized", f"could not be authorized: {exc}") from None

    def _waiting(self, rid: Any) -> bool:
        pending = self._pending.get(rid) if isinstance(rid, int) else None
        return pending is not None and not pending.done.is_set()

    async def _resume(self, rid: Any, last_id: str, retry: float) -> None:
        """The server closed the call's stream before answering: reconnect with Last-Event-ID (SEP-1699)."""
        for _ in range(_MAX_RESUMES):
            await anyio.sleep(retry)
            headers = {**self._session_headers(), "Accept": "text/event-stream", "Last-Event-ID": last_id}
            async with self._client.stream("GET", self.url, headers=headers) as resp:
                if resp.status_code >= 400 or not resp.headers.get("content-type", "").startswith("text/event-stream"):
                    raise UpstreamError(self.name, "protocol", f"refused to resume a stream (HTTP {resp.status_code})")
                new_id, retry = await self._read_sse(resp, until=rid)
            if not self._waiting(rid):
                return
            last_id = new_id or last_id
        raise UpstreamError(self.name, "protocol", f"closed a call's stream {_MAX_RESUMES} times without answering")

    async def _listen(self) -> None:
        """The standalone GET stream: what the server sends outside calls. Servers without one answer 405."""
        with anyio.CancelScope() as scope:
            self._listener = scope
            last_id: str | None = None
            retry = _DEFAULT_RETRY_S
            failures = 0
            while not self._stopping and self._ready.is_set() and failures < 5:
                headers = {**self._session_headers(), "Accept": "text/event-stream"}
                if last_id is not None:
                    headers["Last-Event-ID"] = last_id
                try:
                    async with self._client.stream("GET", self.url, headers=headers) as resp:
                        ctype = resp.headers.get("content-type", "")
                        if resp.status_code >= 400 or not ctype.startswith("text/event-stream"):
                            return  # no standalone stream offered (405) or not for us: nothing to listen to
                        failures = 0
                        new_id, retry = await self._read_sse(resp)
                        last_id = new_id or last_id
                except httpx2.TransportError:
                    failures += 1
                await anyio.sleep(retry * (1 + failures))

    async def _read_sse(self, resp: httpx2.Response, until: Any = None) -> tuple[str | None, float]:
        """Dispatch every event of a stream; returns its last event id and the server's retry delay (seconds).

        With ``until``, stops as soon as that request has its answer (a resumed GET stream may stay open).
        """
        data: list[str] = []
        last_id: str | None = None
        retry = _DEFAULT_RETRY_S
        async for line in resp.aiter_lines():
            if line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif line.startswith("id:"):
                last_id = line[3:].strip() or last_id
            elif line.startswith("retry:") and line[6:].strip().isdigit():
                retry = min(int(line[6:].strip()) / 1000, 60.0)
            elif line == "":
                payload = "\n".join(data).strip()
                data = []
                if not payload:
                    continue  # a priming event: an id and no data
                try:
                    await self._dispatch(orjson.loads(payload))
                except orjson.JSONDecodeError:
                    self._ignored("an SSE event that is not JSON")
                if until is not None and not self._waiting(until):
                    break
        return last_id, retry

    async def aclose(self) -> None:
        self._stopping = True
        self._reconnect.set()
        if self._listener is not None:
            self._listener.cancel()
        if self._session_id:
            with anyio.move_on_after(1):
                try:
                    await self._client.delete(self.url, headers=self._session_headers())
                except httpx2.HTTPError:
                    pass
        await self._client.aclose()
