"""The egress allow-list proxy: its refusals, its relaying, and the whole path out of a real sandbox.

The address filter is the proxy's real one except where a test must reach a listener on this machine's
loopback (the only destination a test can own): there it is widened to loopback, and only there.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from gateway.containment.egress import EgressGrant, EgressProxy, host_allowed, is_public, parse_target
from gateway.containment.launcher import LaunchRequest
from gateway.containment.profile import build_profile
from gateway.containment.runtime import Containment
from gateway.containment.settings import ContainmentConfig, ProfileConfig
from gateway.metrics import Metrics

pytestmark = pytest.mark.anyio

BODY = b"hello from the allowed host"


@asynccontextmanager
async def http_server() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A one-answer HTTP server on 127.0.0.1; yields its port and the request heads it saw."""
    seen: list[bytes] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve(conn: anyio.abc.SocketStream) -> None:
        async with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await conn.receive()
            seen.append(head)
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY))

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield port, seen
        tg.cancel_scope.cancel()


async def ask(path: str, request: bytes) -> bytes:
    async with await anyio.connect_unix(path) as s:
        await s.send(request)
        out = b""
        try:
            with anyio.fail_after(10):
                while True:
                    out += await s.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
        return out


def test_allow_list_matching() -> None:
    allow = ("api.example.com:443", "*.pkg.example.org:443", "[2001:db8::1]:8443")
    assert host_allowed("api.example.com", 443, allow)
    assert host_allowed("API.example.com.", 443, allow)
    assert not host_allowed("api.example.com", 80, allow)
    assert not host_allowed("evil-api.example.com", 443, allow)
    assert host_allowed("a.pkg.example.org", 443, allow) and not host_allowed("pkg.example.org", 443, allow)
    assert not host_allowed("pkg.example.org.evil.net", 443, allow)
    assert host_allowed("2001:db8::1", 8443, allow)
    for bad in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "fd00::1", "::ffff:127.0.0.1", "0.0.0.0"):
        assert not is_public(ipaddress.ip_address(bad)), bad
    assert is_public(ipaddress.ip_address("1.1.1.1"))


def test_request_parsing_rewrites_absolute_form_and_drops_proxy_headers() -> None:
    method, host, port, up = parse_target(
        b"GET http://h.example:8080/a?b HTTP/1.1\r\nHost: h.example\r\nProxy-Authorization: x\r\n\r\n"
    )
    assert (method, host, port) == ("GET", "h.example", 8080)
    assert up.startswith(b"GET /a?b HTTP/1.1\r\n") and b"Proxy-" not in up and up.endswith(b"Connection: close\r\n\r\n")
    assert parse_target(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n")[1:3] == ("2001:db8::1", 443)


async def test_proxy_refuses_unlisted_and_private_destinations(tmp_path: Path) -> None:
    refused: list[tuple[str, str]] = []
    proxy = EgressProxy(str(tmp_path), lambda g, dest, why: refused.append((dest, why)))
    async with http_server() as (port, seen), anyio.create_task_group() as tg:
        proxy.start(tg)
        path, close = await proxy.open(EgressGrant("srv", "alice", "w1", (f"localhost:{port}",)), None)
        unlisted = await ask(path, b"CONNECT other.example:443 HTTP/1.1\r\n\r\n")
        assert unlisted.startswith(b"HTTP/1.1 403") and b"not in the profile's allow_hosts" in unlisted
        private = await ask(path, f"GET http://localhost:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert private.startswith(b"HTTP/1.1 403") and b"private, loopback" in private
        junk = await ask(path, b"HELLO\r\n\r\n")
        assert junk.startswith(b"HTTP/1.1 403")
        await close()
        tg.cancel_scope.cancel()
    assert seen == []
    assert [d for d, _ in refused] == ["other.example:443", f"localhost:{port}", "?"]
    assert not os.path.exists(path)


async def test_proxy_relays_a_listed_destination(tmp_path: Path) -> None:
    proxy = EgressProxy(str(tmp_path), lambda *a: None, address_ok=lambda a: a.is_loopback)
    async with http_server() as (port, seen), anyio.create_task_group() as tg:
        proxy.start(tg)
        path, close = await proxy.open(EgressGrant("srv", "alice", "w1", (f"127.0.0.1:{port}",)), None)
        request = f"GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: a\r\nProxy-Connection: k\r\n\r\n"
        got = await ask(path, request.encode())
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(BODY)
        assert seen[-1].startswith(b"GET /x HTTP/1.1\r\n") and b"Proxy-" not in seen[-1]
        tunnel = await ask(path, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        assert tunnel.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK")
        assert tunnel.endswith(BODY)
        await close()
        tg.cancel_scope.cancel()


async def test_a_sandbox_gets_out_only_through_the_proxy_and_only_to_its_list() -> None:
    work = Path(tempfile.mkdtemp(prefix="containment-egress.", dir="/tmp"))
    os.chmod(work, 0o711)
    metrics = Metrics()
    async with http_server() as (port, seen), http_server() as (other_port, other_seen):
        profile = ProfileConfig(
            tier="sandbox",
            read_only=["/usr", "/etc/ssl"],
            read_write=["{workspace}"],
            network="allowlist",
            allow_hosts=[f"localhost:{port}"],
            env={"PATH": "/usr/bin:/bin"},
            memory_mb=256,
            timeout_s=20,
        )
        cfg = ContainmentConfig(
            workspace_root=str(work / "ws"), uid_base=320000, uid_count=10, profiles={"net": profile}
        )
        rt = Containment(cfg, work, metrics)
        # The one widening in this file: the machine's loopback stands in for "a public host on the list".
        rt.egress._address_ok = lambda a: a.is_loopback or is_public(a)
        p = build_profile("net", profile, work)
        try:
            async with anyio.create_task_group() as tg:
                await rt.start(tg)

                async def sh(cmd: str) -> Any:
                    req = LaunchRequest("srv", "alice", p, ["/bin/sh", "-c", cmd])
                    return await rt.run_once(req, b"", 20, 65536)

                ok = await sh(f"curl -fsS http://localhost:{port}/through-proxy")
                assert ok.exit_code == 0 and ok.stdout == BODY, ok
                assert seen and seen[-1].startswith(b"GET /through-proxy ")
                no = await sh(f"curl -fsS http://localhost:{other_port}/")
                assert no.exit_code != 0 and b"403" in no.stderr and other_seen == []
                direct = await sh(f"curl -fsS --noproxy '*' http://127.0.0.1:{port}/direct")
                assert direct.exit_code != 0 and all(b"/direct" not in h for h in seen)
                dns = await sh("getent hosts localhost.example.com || echo no-dns")
                assert b"no-dns" in dns.stdout
                tg.cancel_scope.cancel()
        finally:
            await rt.aclose()
            shutil.rmtree(work, ignore_errors=True)
    denied = [s for s in metrics.registry.collect() if s.name == "mcp_gateway_egress_denied"]
    assert sum(x.value for x in denied[0].samples if x.name.endswith("_total")) == 1
