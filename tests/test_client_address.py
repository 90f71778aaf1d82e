"""The agent's address in the policy input and the audit log is the connection's, unless a configured reverse
proxy (``[server] trusted_proxies``) names it in ``X-Forwarded-For``: no local process can forge it."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from gateway.http.clientaddr import ForwardedFor
from tests.conftest import KEYS, RunningGateway, default_config, free_port, start_gateway
from tests.test_containment_profiles import errors

KEY = KEYS["ci-bot"][2]
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def _post(gw: RunningGateway, forwarded: list[str], key: str = KEY) -> httpx2.Response:
    headers = [
        ("authorization", f"Bearer {key}"),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        *[("x-forwarded-for", f) for f in forwarded],
    ]
    r = httpx2.post(f"http://127.0.0.1:{gw.port}/mcp", headers=headers, json=INIT)
    sid = r.headers.get("mcp-session-id")
    if sid is None:
        return r
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    return httpx2.post(
        f"http://127.0.0.1:{gw.port}/mcp",
        headers=[*headers, ("mcp-session-id", sid), ("mcp-protocol-version", "2025-11-25")],
        json=listing,
    )


def _addresses(gw: RunningGateway) -> tuple[set[str | None], set[str | None]]:
    """(requested_by and the policy input's remote_addr of decision records, remote_addr of auth failures)."""
    records = gw.audit_records()
    decided = {r.get("requested_by") for r in records if r["type"] == "decision"}
    decided |= {r["input"]["request"]["remote_addr"] for r in records if r["type"] == "decision"}
    failed = {r.get("remote_addr") for r in records if r["type"] == "auth_failure"}
    return decided, failed


def _gateway(tmp_path: Path, server: str = "") -> RunningGateway:
    port = free_port()
    cfg = default_config(port, tmp_path, "").replace("[server]\n", f"[server]\n{server}", 1)
    return start_gateway(tmp_path, cfg, port)


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    gw = _gateway(tmp_path)
    try:
        assert _post(gw, ["203.0.113.9"]).status_code == 200
        assert _post(gw, ["203.0.113.9"], key="not-a-key").status_code == 401
        assert _post(gw, ["203.0.113.9", "198.51.100.1"]).status_code == 200  # two lines: served, and ignored
        decided, failed = _addresses(gw)
        assert decided == {"127.0.0.1"} and failed == {"127.0.0.1"}, (decided, failed)
    finally:
        gw.stop()


def test_a_trusted_proxy_names_the_agent_and_nothing_left_of_it_counts(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, 'trusted_proxies = ["127.0.0.1", "10.9.0.0/16"]\n')
    try:
        # The agent sent "198.51.100.1" itself; the proxies appended the address they saw and their own.
        assert _post(gw, ["198.51.100.1, 203.0.113.9, 10.9.3.4"]).status_code == 200
        assert _post(gw, ["192.0.2.77"], key="not-a-key").status_code == 401
        decided, failed = _addresses(gw)
        assert decided == {"203.0.113.9"} and failed == {"192.0.2.77"}, (decided, failed)
        # Two header lines are one list in their order (RFC 9110, 5.3): the agent's own line, then the line a
        # proxy appended (HAProxy's option forwardfor does so): the proxy's entry still counts, the agent's not.
        assert _post(gw, ["198.51.100.1", "203.0.113.10"]).status_code == 200
        assert _post(gw, ["198.51.100.1, 10.9.9.9", "192.0.2.78"], key="not-a-key").status_code == 401
        decided, failed = _addresses(gw)
        assert decided == {"203.0.113.9", "203.0.113.10"} and failed == {"192.0.2.77", "192.0.2.78"}, (decided, failed)
    finally:
        gw.stop()


def test_the_walk_stops_at_a_malformed_entry_and_only_a_trusted_peer_is_rewritten() -> None:
    stage = ForwardedFor(lambda *a: None, ["127.0.0.1", "10.0.0.0/8"])  # type: ignore[arg-type,return-value]
    assert stage.client_of("127.0.0.1", "203.0.113.9") == "203.0.113.9"
    assert stage.client_of("127.0.0.1", "203.0.113.9, 10.1.1.1") == "203.0.113.9"
    assert stage.client_of("127.0.0.1", "203.0.113.9, junk, 10.1.1.1") == "10.1.1.1"
    assert stage.client_of("127.0.0.1", "10.2.2.2, 10.1.1.1") == "10.2.2.2"  # all trusted: the left-most
    assert stage.client_of("192.0.2.1", "203.0.113.9") == "192.0.2.1"  # the peer is no proxy of ours
    assert stage.client_of("127.0.0.1", None) == "127.0.0.1"
    assert stage.client_of("127.0.0.1", " 2001:db8::1 ") == "2001:db8::1"


def test_a_bad_trusted_proxy_is_refused_at_load() -> None:
    errs = errors('[server]\ntrusted_proxies = ["10.0.0.0/8", "proxy.internal"]\n')
    assert any("server.trusted_proxies" in e and "'proxy.internal' is not an IP address" in e for e in errs), errs


@pytest.mark.parametrize("trusted", [[], ["127.0.0.1"]])
def test_the_stage_is_in_the_chain_only_when_proxies_are_trusted(trusted: list[str]) -> None:
    app = object()
    wrapped = ForwardedFor.wrap(app, trusted)  # type: ignore[arg-type]
    assert (wrapped is app) == (not trusted)
