"""The egress allow-list proxy: the only way out of a sandbox whose profile says ``network = "allowlist"``.

Each such worker gets its own Unix socket (bound into its sandbox; an in-sandbox bridge exposes it as
``http://127.0.0.1:3128`` for ordinary HTTP clients). The proxy speaks HTTP ``CONNECT`` and absolute-form
plain HTTP. It resolves names itself (the sandbox has no DNS), refuses any destination that is not an exact
``host:port`` of the allow-list (or ``*.domain:port``), refuses names that resolve to private, loopback,
link-local or otherwise non-public addresses (including when listed: DNS can be pointed anywhere), and connects
to the address it checked, so a second lookup cannot swap it. Refusals are counted per server and logged.
"""

from __future__ import annotations

import asyncio
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
    """Serves the per-worker Unix sockets on asyncio streams.

    asyncio's own Unix server rather than anyio's: cancelling an anyio Unix socket stream while a read is
    pending can race its readiness callback (``InvalidStateError``), and a worker's connections end when the
    worker does (its end of the socket closes), so they are left to finish rather than cancelled.
    """

    def __init__(
        self,
        directory: str,
        on_refused: Callable[[EgressGrant, str, str], None],
        address_ok: Callable[[Address], bool] = is_public,
    ):
        self.directory = directory
        self._on_refused = on_refused
        self._address_ok = address_ok

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Kept for symmetry with the other runtime parts: the servers live on the running event loop."""

    async def open(self, grant: EgressGrant, uid: int | None) -> tuple[str, Callable[[], Awaitable[None]]]:
        """A socket for one worker: (host path, close function)."""
        path = os.path.join(self.directory, f"{grant.worker}.sock")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await self._handle(reader, writer, grant)
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_unix_server(handle, path, limit=MAX_HEAD)
        os.chmod(path, 0o600)
        if uid is not None:
            os.chown(path, uid, uid)

        async def close() -> None:
            server.close()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

        return path, close

    def _refuse(self, grant: EgressGrant, dest: str, why: str) -> bytes:
        self._on_refused(grant, dest, why)
        log.warning(
            "egress refused: server=%s agent=%s worker=%s to %s: %s", grant.server, grant.agent, grant.worker, dest, why
        )
        body = f"egress to {dest} refused by the gateway: {why}\n".encode()
        return (
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )

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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, grant: EgressGrant) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except (asyncio.LimitOverrunError, ValueError):
            writer.write(self._refuse(grant, "?", "request head too large"))
            await writer.drain()
            return
        except (TimeoutError, asyncio.IncompleteReadError):
            return
        dest = "?"
        try:
            method, host, port, upstream_head = parse_target(head)
            dest = f"{host}:{port}"
            if not host_allowed(host, port, grant.allow_hosts):
                raise Refused("not in the profile's allow_hosts")
            addr = await self._resolve(host, port)
            remote_r, remote_w = await asyncio.wait_for(asyncio.open_connection(str(addr), port), CONNECT_TIMEOUT)
        except Refused as exc:
            writer.write(self._refuse(grant, dest, str(exc)))
            await writer.drain()
            return
        except (OSError, TimeoutError) as exc:
            writer.write(
                b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n" + f"cannot connect to {dest}: {exc}\n".encode()
            )
            await writer.drain()
            return
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:
                remote_w.write(upstream_head)
            await asyncio.gather(_relay(reader, remote_w), _relay(remote_r, writer))
        finally:
            remote_w.close()


async def _relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await src.read(65536)
            if not data:
                break
            dst.write(data)
            await dst.drain()
    except OSError:
        pass
    try:
        if dst.can_write_eof():
            dst.write_eof()
    except OSError:
        pass
