"""Remote upstream MCP servers over streamable HTTP.

The connector keeps one MCP session with the server, reconnects with backoff when the server is unreachable
(the gateway starts anyway and reports the upstream as down), and re-initializes when the server forgets the
session (HTTP 404). Responses may be plain JSON or an SSE stream; every message on the stream is dispatched,
so progress notifications and server-to-client requests reach the gateway while the call runs. A stream that
ends before its response is resumed with a GET and ``Last-Event-ID`` after the server's ``retry`` delay
(SEP-1699), and a standalone GET stream carries what the server sends outside calls (list changes, resource
updates), when the server offers one.

Nothing an upstream sends is held past ``Limits.max_message_bytes``: a JSON body is read in chunks and cut at
the limit (a Content-Length above it is refused unread), an SSE event is cut while it grows (its unfinished
line included, so an event that never ends or a line without a newline costs at most the limit), and an error
body is read for its first 500 bytes only. A cut answer fails its request with an ``oversize`` UpstreamError.

SSE is parsed by httpx2's bounded event parser (the one its ``EventSource`` uses) with ``max_event_size``.

Requests go out on a pooled keep-alive aiohttp session (``connectors/exchange.py``: one send per request, no
handshake per call), or on httpx2 for an upstream with ``oauth`` (the SDK's OAuth provider is an httpx2 flow).
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from typing import Any

import anyio
import anyio.abc
import httpx2
import orjson
from mcp.client.auth.exceptions import OAuthFlowError
from mcp.shared.inbound import encode_header_value, mcp_param_headers, x_mcp_header_map
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from connectors.base import Limits, StateFn
from connectors.exchange import (
    AiohttpExchange,
    EventTooLarge,
    Exchange,
    ExchangeError,
    Response,
    sse_events,
)
from connectors.jsonrpc import CLIENT_INFO, JsonRpcPeer, UpstreamError

log = logging.getLogger("gateway.upstream")

_DEFAULT_RETRY_S = 1.0
_MAX_RESUMES = 5
_ERROR_BODY_BYTES = 500

_PROTOCOL_META = "io.modelcontextprotocol/protocolVersion"
_CLIENT_META = "io.modelcontextprotocol/clientInfo"
_CAPABILITIES_META = "io.modelcontextprotocol/clientCapabilities"


def _is_sse(resp: Response) -> bool:
    ctype = resp.header("content-type").partition(";")[0]
    return ctype.strip().lower() == "text/event-stream"


class HttpConnector(JsonRpcPeer):
    def __init__(
        self,
        name: str,
        url: str,
        headers: dict[str, str] | None = None,
        start_timeout: float = 30.0,
        on_state: StateFn | None = None,
        auth: httpx2.Auth | None = None,
        limits: Limits | None = None,
    ):
        super().__init__(name, limits)
        self.url = url
        self._headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            **(headers or {}),
        }
        self.start_timeout = start_timeout
        self.on_state = on_state
        if auth is None:
            self._http: Exchange = AiohttpExchange(url)
        else:
            from connectors.httpx2_exchange import Httpx2Exchange

            self._http = Httpx2Exchange(auth)
        self._session_id: str | None = None
        self._ready = anyio.Event()
        self._reconnect = anyio.Event()
        self._stopping = False
        self._attempted = anyio.Event()
        """Set once the first connection attempt has ended, either way: until then a request waits for it."""
        self._listener: anyio.CancelScope | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self.last_error = "not connected yet"
        self._modern: str | None = None
        """The 2026-era version the server offers, once discovered; None keeps every call in the session."""
        self._param_headers: dict[str, dict[tuple[str, ...], str]] = {}
        """Per tool seen in this server's lists: its ``x-mcp-header`` arguments (a call to a tool never listed
        stays in the session, as its ``Mcp-Param-*`` headers are unknown)."""

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
                # last_error reaches agents ("is not reachable (...)"): the exception's own text stays in the log
                self.last_error = exc.detail if isinstance(exc, UpstreamError) else exc.__class__.__name__
                if not self._attempted.is_set() and self.on_state:
                    self.on_state(self, False)  # its first attempt failed: the gateway need not wait for it to serve
                self._attempted.set()
                log.warning(
                    "upstream %s: %s; retrying in %.1f s",
                    self.name,
                    self.last_error if isinstance(exc, UpstreamError) else f"{exc!r}",
                    backoff,
                )
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _connect(self) -> None:
        self._session_id = None
        with anyio.fail_after(self.start_timeout):
            result = await JsonRpcPeer.request(self, "initialize", self._initialize_params(), self.start_timeout)
        self._adopt(result)
        await self.notify("notifications/initialized")
        self._modern = await self._discover() if self.stateless_calls else None
        self.last_error = ""
        self._ready.set()

    async def _discover(self) -> str | None:
        """The newest 2026-era version the server serves statelessly, or None (a 2025-only server answers
        ``server/discover`` with an error, which is quietly taken as "no")."""
        try:
            with anyio.fail_after(self.start_timeout):
                envelope = {
                    _PROTOCOL_META: MODERN_PROTOCOL_VERSIONS[-1],
                    _CLIENT_META: CLIENT_INFO,
                    _CAPABILITIES_META: {},
                }
                result = await JsonRpcPeer.request(self, "server/discover", {"_meta": envelope}, self.start_timeout)
        except Exception as exc:  # any failure keeps the session for everything, as before
            log.debug("upstream %s: no stateless era (%s)", self.name, type(exc).__name__)
            return None
        offered = result.get("supportedVersions")
        versions = [v for v in MODERN_PROTOCOL_VERSIONS if isinstance(offered, list) and v in offered]
        return max(versions) if versions else None

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
        if method == "tools/call" and self._modern is not None and params and params.get("name") in self._param_headers:
            return await self._stateless_call(params, timeout, on_progress)
        result = await super().request(method, params, timeout, on_progress)
        if method == "tools/list" and self._modern is not None:
            self._learn(result)
        return result

    def _learn(self, result: dict[str, Any]) -> None:
        tools = result.get("tools")
        for tool in tools if isinstance(tools, list) else []:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                try:
                    self._param_headers[tool["name"]] = x_mcp_header_map(tool.get("inputSchema"))
                except Exception:  # a schema the SDK's reader cannot walk: that tool's calls stay in the session
                    self._param_headers.pop(tool["name"], None)

    async def _stateless_call(self, params: dict[str, Any], timeout: float, on_progress: Any) -> dict[str, Any]:
        """A ``tools/call`` as a stateless 2026-era request: no session id, the era's envelope in ``_meta`` and
        its routing headers. The server's cheapest path (no session stream, a plain JSON answer); a result that
        asks for input (which a shared session cannot relay either) is an error."""
        version = self._modern
        assert version is not None
        meta = {
            **(params.get("_meta") or {}),
            _PROTOCOL_META: version,
            _CLIENT_META: CLIENT_INFO,
            _CAPABILITIES_META: {},
        }
        result = await super().request("tools/call", {**params, "_meta": meta}, timeout, on_progress)
        kind = result.pop("resultType", "complete")
        if kind != "complete":
            raise UpstreamError(
                self.name,
                "protocol",
                f"asked for input ({kind}) that a shared upstream session cannot relay "
                '(set session_mode = "per_session" on this upstream)',
            )
        return result

    def _session_headers(self, versioned: bool = True) -> dict[str, str]:
        """The headers of a request in this session (the protocol version once it has been negotiated)."""
        headers = dict(self._headers)
        if self._session_id:
            headers["Mcp-Session-Id"] = self._session_id
        if versioned:
            headers["MCP-Protocol-Version"] = self.protocol_version
        return headers

    def _headers_for(self, message: dict[str, Any]) -> tuple[dict[str, str], bool]:
        """A message's headers, and whether it is one of this connector's own stateless 2026-era requests: those
        carry the connector's own ``CLIENT_INFO`` object in ``_meta`` (by identity: an agent's ``_meta`` passed
        through never does, whatever it says)."""
        method = message.get("method")
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if not isinstance(meta, dict) or meta.get(_CLIENT_META) is not CLIENT_INFO:
            return self._session_headers(versioned=method != "initialize"), False
        headers = {**self._headers, "MCP-Protocol-Version": str(meta[_PROTOCOL_META]), "Mcp-Method": str(method)}
        if method == "tools/call":
            assert isinstance(params, dict)
            name, arguments = str(params.get("name")), params.get("arguments")
            headers["Mcp-Name"] = encode_header_value(name)
            header_map = self._param_headers.get(name)
            if header_map and isinstance(arguments, dict):
                headers.update(mcp_param_headers(header_map, arguments))
        return headers, True

    async def _send(self, message: dict[str, Any]) -> None:
        resume: tuple[str, float] | None = None
        headers, stateless = self._headers_for(message)
        try:
            async with self._http.open("POST", self.url, headers, orjson.dumps(message)) as resp:
                if stateless and resp.status >= 400 and not _is_sse(resp):
                    # The era answers a refused request with its JSON-RPC error under a 4xx status.
                    await self._dispatch(orjson.loads(await self._read_body(resp)))
                    if self._waiting(message["id"]):
                        raise UpstreamError(self.name, "protocol", f"answered HTTP {resp.status}")
                    return
                if resp.status == 404 and self._session_id:
                    self._mark_down("the server ended the session")
                    raise UpstreamError(self.name, "unavailable", "ended the session; reconnecting")
                if resp.status >= 400:
                    body = await self._head(resp)
                    raise UpstreamError(self.name, "protocol", f"answered HTTP {resp.status}: {body}")
                sid = resp.header("mcp-session-id")
                if sid and message.get("method") == "initialize":
                    self._session_id = sid
                if "id" not in message or "method" not in message or resp.status == 202:
                    return
                if _is_sse(resp):
                    last_id, retry = await self._read_sse(resp)
                    if self._waiting(message["id"]):
                        if last_id is None:  # nothing to resume from: the answer will never come
                            raise UpstreamError(
                                self.name, "protocol", f"ended the stream of {message['method']} without answering it"
                            )
                        resume = (last_id, retry)
                else:
                    await self._dispatch(orjson.loads(await self._read_body(resp)))
                    if self._waiting(message["id"]):
                        raise UpstreamError(
                            self.name, "protocol", f"answered {message['method']} with JSON that is not its response"
                        )
            if resume is not None:
                await self._resume(message["id"], *resume)
        except ExchangeError as exc:
            self._mark_down(f"connection failed: {exc}")
            raise UpstreamError(self.name, "unavailable", f"is not reachable: {exc}") from None
        except orjson.JSONDecodeError:
            raise UpstreamError(self.name, "protocol", "sent a body that is not JSON") from None
        except (OAuthFlowError, ValueError, RuntimeError) as exc:  # the OAuth flow (see connectors.oauth) failed
            log.warning("upstream %s: OAuth failed: %r", self.name, exc)
            raise UpstreamError(self.name, "unauthorized", f"could not be authorized ({type(exc).__name__})") from None

    def _oversize(self, what: str) -> UpstreamError:
        limit = self.limits.max_message_bytes
        log.warning("upstream %s sent %s over %d bytes; cut", self.name, what, limit)
        return UpstreamError(self.name, "oversize", f"sent {what} over the limit of {limit} bytes; not read further")

    async def _read_body(self, resp: Response) -> bytearray:
        """The whole body, read in chunks and refused as soon as it exceeds the message limit."""
        limit = self.limits.max_message_bytes
        length = resp.header("content-length")
        if length.isdigit() and int(length) > limit:
            raise self._oversize("a body")
        body = bytearray()
        async for chunk in resp.chunks():
            body += chunk
            if len(body) > limit:
                raise self._oversize("a body")
        return body

    @staticmethod
    async def _head(resp: Response) -> str:
        """The start of an error body, for the message (the rest is never read)."""
        head = bytearray()
        async for chunk in resp.chunks():
            head += chunk
            if len(head) >= _ERROR_BODY_BYTES:
                break
        return head[:_ERROR_BODY_BYTES].decode("utf-8", "replace")

    def _waiting(self, rid: Any) -> bool:
        pending = self._pending.get(rid) if isinstance(rid, int) else None
        return pending is not None and not pending.done.is_set()

    async def _resume(self, rid: Any, last_id: str, retry: float) -> None:
        """The server closed the call's stream before answering: reconnect with Last-Event-ID (SEP-1699)."""
        for _ in range(_MAX_RESUMES):
            await anyio.sleep(retry)
            headers = {**self._session_headers(), "Accept": "text/event-stream", "Last-Event-ID": last_id}
            async with self._http.open("GET", self.url, headers) as resp:
                if resp.status >= 400 or not _is_sse(resp):
                    raise UpstreamError(self.name, "protocol", f"refused to resume a stream (HTTP {resp.status})")
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
                    async with self._http.open("GET", self.url, headers) as resp:
                        if resp.status >= 400 or not _is_sse(resp):
                            return  # no standalone stream offered (405) or not for us: nothing to listen to
                        failures = 0
                        new_id, retry = await self._read_sse(resp)
                        last_id = new_id or last_id
                except (ExchangeError, UpstreamError):  # an oversized event cuts the stream: reconnect
                    failures += 1
                await anyio.sleep(retry * (1 + failures))

    async def _read_sse(self, resp: Response, until: Any = None) -> tuple[str | None, float]:
        """Dispatch every event of a stream; returns its last event id and the server's retry delay (seconds).

        With ``until``, stops as soon as that request has its answer (a resumed GET stream may stay open).
        An event over the message limit cuts the stream (UpstreamError ``oversize``).
        """
        last_id: str | None = None
        retry = _DEFAULT_RETRY_S
        try:
            async with aclosing(sse_events(resp, self.limits.max_message_bytes)) as stream:
                async for event in stream:
                    last_id = event.id or last_id
                    if event.retry is not None:
                        retry = min(max(event.retry, 0) / 1000, 60.0)
                    if not event.data.strip():
                        continue  # a priming event: an id and no data
                    try:
                        msg = orjson.loads(event.data)
                    except orjson.JSONDecodeError:
                        self._ignored("an SSE event that is not JSON")
                        continue
                    await self._dispatch(msg)
                    if until is not None and not self._waiting(until):
                        break
        except EventTooLarge:
            raise self._oversize("an SSE event") from None
        return last_id, retry

    async def aclose(self) -> None:
        self._stopping = True
        self._reconnect.set()
        if self._listener is not None:
            self._listener.cancel()
        if self._session_id:
            with anyio.move_on_after(1):
                try:
                    async with self._http.open("DELETE", self.url, self._session_headers()):
                        pass
                except ExchangeError:
                    pass
        await self._http.aclose()
