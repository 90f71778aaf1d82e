"""The egress allow-list proxy: the only way out of a sandbox whose profile says ``network = "allowlist"``.

Each such worker gets its own Unix socket (bound into its sandbox; an in-sandbox bridge exposes it as
``http://127.0.0.1:3128`` for ordinary HTTP clients). The proxy speaks HTTP ``CONNECT`` and absolute-form
plain HTTP. It resolves names itself (the sandbox has no DNS), refuses any destination that is not an exact
``host:port`` of the allow-list (or ``*.domain:port``), refuses names that resolve to private, loopback,
link-local or otherwise non-public addresses (including when listed: DNS can be pointed anywhere), and connects
to the address it checked, so a second lookup cannot swap it. Refusals are counted per server and logged.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.abc

log = logging.getLogger("gateway.egress")

MAX_HEAD = 16384
CONNECT_TIMEOUT = 10.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(addr: Address) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return bool(addr.is_global) and not addr.is_multicast


@dataclass(frozen=True)
class EgressGrant:
    server: str
    agent: str
    worker: str
    allow_hosts: tuple[str, ...]


def host_allowed(host: str, port: int, allow: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    for entry in allow:
        h, _, p = entry.rpartition(":")
        if int(p) != port:
            continue
        h = h.strip("[]")
        if h.startswith("*."):
            if host.endswith(h[1:]) and len(host) > len(h) - 1:
                return True
        elif host == h:
            return True
    return False


class Refused(Exception):
    pass


def parse_target(head: bytes) -> tuple[str, str, int, bytes]:
    """(method, host, port, request bytes to send upstream) from a proxy request head."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        raise Refused("bad request") from None
    line, _, rest = text.partition("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise Refused("bad request line")
    method, target, version = parts
    if method.upper() == "CONNECT":
        host, sep, port = target.rpartition(":")
        if not sep or not port.isdigit():
            raise Refused("CONNECT needs host:port")
        return "CONNECT", host.strip("[]"), int(port), b""
    if not target.lower().startswith("http://"):
        raise Refused("only CONNECT and absolute http:// requests are proxied")
    hostport, slash, path = target[7:].partition("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or hostport.endswith("]"):
        host, port = hostport, "80"
    if not port.isdigit():
        raise Refused("bad port")
    headers = [h for h in rest.split("\r\n") if h and not h.lower().startswith(("proxy-", "connection:"))]
    upstream = f"{method} /{path if slash else ''} {version}\r\n" + "\r\n".join([*headers, "Connection: close"])
    return method, host.strip("[]"), int(port), (upstream + "\r\n\r\n").encode("latin-1")


class EgressProxy:
    def __init__(
        self,
        directory: str,
        on_refused: Callable[[EgressGrant, str, str], None],
        address_ok: Callable[[Address], bool] = is_public,
    ):
        self.directory = directory
        self._on_refused = on_refused
        self._address_ok = address_ok
        self._tg: anyio.abc.TaskGroup | None = None
        self.refused = 0

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg

    async def open(self, grant: EgressGrant, uid: int | None) -> tuple[str, Callable[[], Awaitable[None]]]:
        """A socket for one worker: (host path, close function)."""
        assert self._tg is not None, "EgressProxy.start first"
        path = os.path.join(self.directory, f"{grant.worker}.sock")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        listener = await anyio.create_unix_listener(path)
        os.chmod(path, 0o600)
        if uid is not None:
            os.chown(path, uid, uid)
        scope = anyio.CancelScope()

        async def serve() -> None:
            with scope:
                async with listener, anyio.create_task_group() as tg:
                    while True:
                        conn = await listener.accept()
                        tg.start_soon(self._handle, conn, grant)

        self._tg.start_soon(serve)

        async def close() -> None:
            scope.cancel()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

        return path, close

    def _refuse(self, grant: EgressGrant, dest: str, why: str) -> bytes:
        self.refused += 1
        self._on_refused(grant, dest, why)
        log.warning("egress refused: server=%s agent=%s worker=%s to %s: %s",
                    grant.server, grant.agent, grant.worker, dest, why)
        body = f"egress to {dest} refused by the gateway: {why}\n".encode()
        return (b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)

    async def _resolve(self, host: str, port: int) -> Address:
        try:
            literal: Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addrs: list[Address] = [literal]
        else:
            try:
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                raise Refused(f"cannot resolve {host}: {exc}") from None
            addrs = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addrs:
            raise Refused(f"{host} has no address")
        bad = [a for a in addrs if not self._address_ok(a)]
        if bad:
            raise Refused(f"{host} resolves to a private, loopback or reserved address ({bad[0]})")
        return addrs[0]

    async def _handle(self, client: anyio.abc.SocketStream, grant: EgressGrant) -> None:
        async with client:
            head = b""
            try:
                with anyio.fail_after(30):
                    while b"\r\n\r\n" not in head:
                        chunk = await client.receive(4096)
                        head += chunk
                        if len(head) > MAX_HEAD:
                            raise Refused("request head too large")
            except (Refused, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
                if isinstance(exc, Refused):
                    await _send_quietly(client, self._refuse(grant, "?", str(exc)))
                return
            head, _, body = head.partition(b"\r\n\r\n")
            head += b"\r\n\r\n"
            dest = "?"
            try:
                method, host, port, upstream_head = parse_target(head)
                dest = f"{host}:{port}"
                if not host_allowed(host, port, grant.allow_hosts):
                    raise Refused("not in the profile's allow_hosts")
                addr = await self._resolve(host, port)
                with anyio.fail_after(CONNECT_TIMEOUT):
                    remote = await anyio.connect_tcp(str(addr), port)
            except Refused as exc:
                await _send_quietly(client, self._refuse(grant, dest, str(exc)))
                return
            except (OSError, TimeoutError) as exc:
                await _send_quietly(client, b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n"
                                    + f"cannot connect to {dest}: {exc}\n".encode())
                return
            async with remote:
                if method == "CONNECT":
                    await client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
                else:
                    await remote.send(upstream_head)
                if body:
                    await remote.send(body)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_relay, client, remote, tg.cancel_scope)
                    tg.start_soon(_relay, remote, client, tg.cancel_scope)


async def _send_quietly(stream: anyio.abc.SocketStream, data: bytes) -> None:
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass


async def _relay(src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream, scope: anyio.CancelScope) -> None:
    try:
        while True:
            data = await src.receive(65536)
            await dst.send(data)
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    try:
        await dst.send_eof()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, NotImplementedError):
        scope.cancel()
