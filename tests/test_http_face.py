"""The HTTP face: what the agent port serves, what only the admin listener serves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import ECHO, RunningGateway, default_config, free_port, start_gateway, stdio_upstream


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("face")
    port = free_port()
    g = start_gateway(workdir, default_config(port, workdir, stdio_upstream("echo", ECHO)), port)
    yield g
    g.stop()


def test_metrics_and_readiness_are_not_on_the_agent_port(gw: RunningGateway) -> None:
    """/metrics and /readyz name every agent and tool: the agent port answers 404, the admin listener serves them."""
    for path in ("/metrics", "/readyz"):
        assert httpx2.get(gw.base + path).status_code == 404
    assert "mcp_gateway_" in httpx2.get(gw.admin_base + "/metrics").text
    assert httpx2.get(gw.admin_base + "/readyz").json()["ready"] is True
    assert httpx2.get(gw.admin_base + "/healthz").status_code == 200
    assert httpx2.get(gw.base + "/healthz").status_code == 200
    assert httpx2.get(gw.admin_base + "/mcp").status_code == 404  # and no agent traffic on the admin port


def test_admin_listen_must_differ_from_listen(tmp_path: Path) -> None:
    from gateway.config import ConfigError, load_config

    cfg = tmp_path / "g.toml"
    cfg.write_text('[server]\nlisten = "127.0.0.1:8080"\nadmin_listen = "127.0.0.1:8080"\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert any("admin_listen" in e for e in err.value.errors)


def test_header_parsing_reads_the_same_whether_or_not_some_name_repeats() -> None:
    """parse() has a fast path (no name twice) and a scan (some name twice): both read the same values, and the
    scan refuses every single-valued header sent twice."""
    from gateway.http.headers import SINGLE, RequestHeaders, parse

    base = [
        (b"host", b"h:1"),
        (b"authorization", b""),
        (b"mcp-session-id", b"s"),
        (b"mcp-method", b"tools/call"),
        (b"mcp-name", "n\u00e9".encode()),
        (b"mcp-param-x", b"1"),
        (b"tracestate", b"a=1"),
        (b"accept", b"*/*"),
    ]
    fast = parse(base)
    assert isinstance(fast, RequestHeaders)
    assert fast.authorization == "" and fast.mcp_name == "n\u00e9" and fast.has_mcp_param and fast.tracestate == "a=1"
    assert parse([*base, (b"accept", b"text/plain")]) == fast  # a harmless repeat takes the scan: same values
    for name in [*SINGLE, b"mcp-param-x"]:
        assert parse([*base, (name, b"v"), (name, b"w")]) == name


def test_the_admin_listener_checks_host_on_loopback(gw: RunningGateway) -> None:
    """A browser page that rebinds its own name to 127.0.0.1 sends its own Host: refused; a scraper is served."""
    assert httpx2.get(gw.admin_base + "/metrics", headers={"Host": "attacker.example"}).status_code == 421
    assert httpx2.get(gw.admin_base + "/metrics", headers={"Host": f"localhost:{gw.admin_port}"}).status_code == 200


def test_listeners_send_small_writes_at_once() -> None:
    """Connections accepted on the gateway's listeners have TCP_NODELAY: asyncio sets it only when the socket's
    proto says TCP, and an answer written as head then body otherwise waited for the client's delayed ACK."""
    import socket

    from gateway.http.server import bind

    listener = bind("127.0.0.1", 0)
    try:
        assert listener.proto == socket.IPPROTO_TCP
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        listener.close()
