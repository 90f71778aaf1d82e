"""The gateway's HTTP face: a pure ASGI app.

In order, for ``/mcp`` and ``/mcp/<upstream>``: Host/Origin check (DNS rebinding), body-size limit,
authentication, session ownership (a session id is usable only by the agent that opened it), then the SDK's
streamable-HTTP transport. Everything is configured once in ``__init__``; ``__call__`` stays lean.
Also serves ``/healthz`` and the OAuth protected-resource metadata (RFC 9728).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any

import anyio
import orjson
from starlette.types import Message, Receive, Scope, Send

from gateway.fastpath import FastPath, modern_client, parse_tool_call
from gateway.frontend import AGENT_KEY
from gateway.identity import AuthError
from gateway.sdk_adapter import server_exiting
from gateway.service import Gateway

log = logging.getLogger("gateway.http")

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _respond(send: Send, status: int, body: bytes, ctype: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _jsonrpc_error(
    send: Send, status: int, code: int, message: str, headers: list[tuple[bytes, bytes]] = ()  # type: ignore[assignment]
) -> None:
    body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}})
    await _respond(send, status, body, b"application/json", headers)


_Session = tuple[tuple[str, str, str], float, dict[str, Any], str | None]
"""A session the SDK opened: (owner agent, last seen, client info, protocol version)."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it grows past the limit (chunked bodies have no Content-Length)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _client_of(body: bytes) -> tuple[dict[str, Any], str | None]:
    """clientInfo and protocol version of an initialize request, kept for the session's policy input."""
    if b'"initialize"' not in body:
        return {}, None
    try:
        msg = orjson.loads(body)
        params = msg["params"]
        info = params.get("clientInfo") or {}
        return {"name": info.get("name"), "version": info.get("version")}, params.get("protocolVersion")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return {}, None


class GatewayApp:
    def __init__(self, gateway: Gateway):
        self.gw = gateway
        server = gateway.config.server
        self._limit = server.max_request_bytes
        self._too_large = f"request body exceeds the limit of {self._limit} bytes (server.max_request_bytes)"
        port = server.port
        if server.allowed_hosts is not None:
            hosts = set(server.allowed_hosts)
        elif _is_loopback(server.host):
            hosts = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")} | {"127.0.0.1", "localhost"}
        else:
            hosts = set()  # bound to a routable address without allowed_hosts: Host is not checked (logged)
            log.warning("server.allowed_hosts is not set and the gateway listens on %s: Host headers are not checked",
                        server.host)
        self._hosts = frozenset(h.lower() for h in hosts)
        if server.allowed_origins is not None:
            self._origins = frozenset(server.allowed_origins)
        else:
            self._origins = frozenset(f"http://{h}" for h in hosts) | frozenset(f"https://{h}" for h in hosts)
        self._apps = {view: m.handle_request for view, m in gateway.session_managers.items()}
        self._public = (server.public_url or f"http://{server.listen}").rstrip("/")
        self._resource_metadata_url = f"{self._public}{WELL_KNOWN}/mcp"
        self._jwt = gateway.auth.jwt_issuer is not None
        self._sessions: dict[str, _Session] = {}
        self._fast = FastPath(gateway.pipeline, gateway.session_managers)
        gateway.metrics.sessions.set_function(lambda: len(self._live_session_ids()))
        self._in_flight = 0
        self._last_prune = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if (path == "/mcp" or path.startswith("/mcp/")) and scope["method"] == "GET":
                await self._mcp(scope, receive, send, path)  # a listening stream: it does not hold a drain up
            elif path == "/mcp" or path.startswith("/mcp/"):
                self._in_flight += 1
                try:
                    await self._mcp(scope, receive, send, path)
                finally:
                    self._in_flight -= 1
            elif path == "/healthz":
                await _respond(send, 200, b'{"status":"ok"}', b"application/json")
            elif path == WELL_KNOWN or path.startswith(WELL_KNOWN + "/"):
                await self._resource_metadata(send, path)
            else:
                await _respond(send, 404, b'{"error":"not found"}', b"application/json")
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        msg = await receive()
        assert msg["type"] == "lifespan.startup"
        try:
            async with self.gw.running(), anyio.create_task_group() as tg:
                tg.start_soon(self._drain_on_exit)
                await send({"type": "lifespan.startup.complete"})
                msg = await receive()
                # lifespan.shutdown: leaving the block stops upstreams and session managers
                tg.cancel_scope.cancel()
        except Exception as exc:
            log.exception("gateway failed")
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})

    async def _drain_on_exit(self) -> None:
        """Graceful shutdown: calls in flight finish (and are recorded) before the SDK's SSE streams are closed.

        By default sse-starlette ends every SSE stream the moment the server is told to stop, cutting calls that
        answer on a stream. Here the streams stay up while anything other than a GET is in flight (bounded by
        the server's own graceful-shutdown timeout), then are closed so idle listening streams do not hold the
        shutdown up.
        """
        from sse_starlette.sse import AppStatus

        AppStatus.disable_automatic_graceful_drain()
        while not server_exiting():
            await anyio.sleep(0.05)
        log.info("shutting down: %d requests in flight", self._in_flight)
        while self._in_flight:
            await anyio.sleep(0.05)
        await anyio.sleep(0.5)  # let clients take in their last answers before their listening streams go
        AppStatus.should_exit = True

    def _header(self, scope: Scope, name: bytes) -> str | None:
        for k, v in scope["headers"]:
            if k == name:
                return str(v.decode("latin-1"))
        return None

    async def _mcp(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        headers = dict(scope["headers"])
        if self._hosts:
            host = headers.get(b"host", b"").decode("latin-1").lower()
            if host not in self._hosts:
                await _respond(send, 421, b"Invalid Host header", b"text/plain")
                return
            origin = headers.get(b"origin")
            if origin is not None and origin.decode("latin-1") not in self._origins:
                await _respond(send, 403, b"Invalid Origin header", b"text/plain")
                return
        view: str | None = None
        if path != "/mcp":
            view = path[5:].rstrip("/")
            if view not in self._apps:
                await _jsonrpc_error(send, 404, -32601, f"no upstream named {view!r} on this gateway")
                return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self._limit):
            await _jsonrpc_error(send, 413, -32600, self._too_large)
            return
        client = scope.get("client")
        remote = client[0] if client else None
        auth = headers.get(b"authorization")
        try:
            agent = self.gw.auth.authenticate(auth.decode("latin-1") if auth is not None else None)
        except AuthError as exc:
            self.gw.metrics.auth_failures.labels(exc.reason).inc()
            self.gw.recorder.auth_failure(exc.reason, remote, path)
            await self._unauthorized(send, exc)
            return
        sid_raw = headers.get(b"mcp-session-id")
        owner_key = (agent.id, agent.auth, agent.team)
        if sid_raw is not None:
            bound = self._sessions.get(sid_raw.decode("latin-1"))
            if bound is None or bound[0] != owner_key:
                # Every session is bound to its agent when it is opened: an id without a binding is unknown (or
                # forgotten), and another agent's id is never usable. Both get the SDK's own answer to an unknown
                # session, byte for byte, so a probe cannot tell "someone else's" from "no such session".
                await _jsonrpc_error(send, 404, -32600, "Session not found")
                return
        scope.setdefault("state", {})[AGENT_KEY] = agent
        method = scope["method"]
        if method == "POST":
            body = await _read_body(receive, self._limit)
            if body is None:
                await _jsonrpc_error(
                    send, 413, -32600, self._too_large
                )
                return
            original_receive, receive = receive, _replay(body, receive)
            if sid_raw is None:
                msg = parse_tool_call(body)
                if msg is not None:
                    client_info = modern_client(msg, headers)
                    if client_info is not None and await self._fast.handle(
                        msg, agent, view, None, client_info, headers[b"mcp-protocol-version"].decode(), remote,
                        original_receive, send,
                    ):
                        return
                send = self._binding_send(send, owner_key, _client_of(body))
            else:
                sid = sid_raw.decode("latin-1")
                info = self._touch(sid, owner_key)
                msg = parse_tool_call(body)
                if msg is not None and info is not None and await self._fast.handle(
                    msg, agent, view, sid, info[2], info[3], remote, original_receive, send
                ):
                    return
                self._fast.cancel(sid, body)
        elif method == "DELETE" and sid_raw is not None:
            send = self._unbinding_send(send, sid_raw.decode("latin-1"))
        elif sid_raw is not None:
            self._touch(sid_raw.decode("latin-1"), owner_key)
        await self._apps[view](scope, receive, send)

    def _touch(self, sid: str, owner: tuple[str, str, str]) -> _Session | None:
        info = self._sessions.get(sid)
        if info is not None:
            info = self._sessions[sid] = (owner, time.monotonic(), info[2], info[3])
        return info

    def _binding_send(self, send: Send, owner: tuple[str, str, str], client: tuple[dict[str, Any], str | None]) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                for k, v in message.get("headers", []):
                    if k.lower() == b"mcp-session-id":
                        self._sessions[v.decode("latin-1")] = (owner, time.monotonic(), client[0], client[1])
                        self._prune()
                        break
            await send(message)

        return wrapped

    def _unbinding_send(self, send: Send, sid: str) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 300:
                self._sessions.pop(sid, None)
            await send(message)

        return wrapped

    def _live_session_ids(self) -> set[str]:
        # The SDK owns session lifetime (idle expiry, DELETE); bindings follow it.
        live: set[str] = set()
        for manager in self.gw.session_managers.values():
            live.update(getattr(manager, "_server_instances", {}))
        return live

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune > 5:
            self._last_prune = now
            live = self._live_session_ids()
            for sid in [s for s in self._sessions if s not in live]:
                del self._sessions[sid]

    async def _unauthorized(self, send: Send, exc: AuthError) -> None:
        desc = exc.detail.replace('"', "'")
        challenge = f'Bearer realm="mcp-gateway", error="invalid_token", error_description="{desc}"'
        if exc.reason == "missing":
            challenge = 'Bearer realm="mcp-gateway"'
        if self._jwt:
            challenge += f', resource_metadata="{self._resource_metadata_url}"'
        await _jsonrpc_error(send, 401, -32001, exc.detail, [(b"www-authenticate", challenge.encode())])

    async def _resource_metadata(self, send: Send, path: str) -> None:
        if not self._jwt:
            await _respond(send, 404, b'{"error":"no identity provider is configured"}', b"application/json")
            return
        resource = self._public + (path[len(WELL_KNOWN) :] or "/mcp")
        doc = {
            "resource": resource,
            "authorization_servers": [self.gw.auth.jwt_issuer],
            "bearer_methods_supported": ["header"],
            "resource_name": "MCP containment gateway",
        }
        await _respond(send, 200, orjson.dumps(doc), b"application/json")

