"""Identity at the gateway: API keys, signed JWTs, anonymous access, and what a refused request looks like."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import (
    ECHO,
    KEYS,
    RunningGateway,
    default_config,
    free_port,
    mcp_client,
    start_gateway,
    stdio_upstream,
)

pytestmark = pytest.mark.anyio
ISSUER = "https://idp.test"
AUDIENCE = "mcp-gateway"


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwt_gateway(tmp_path_factory: pytest.TempPathFactory, signing_key: rsa.RSAPrivateKey) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("jwt")
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    (workdir / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    extra = f"""
[identity.jwt]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_file = "jwks.json"
"""
    port = free_port()
    gw = start_gateway(workdir, default_config(port, workdir, stdio_upstream("echo", ECHO), extra), port)
    yield gw
    gw.stop()


def token(key: rsa.RSAPrivateKey, **overrides: object) -> str:
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "jwt-agent-7",
        "team": "platform",
        "roles": ["ci"],
        "exp": int(time.time()) + 300,
    }
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})


def post_initialize(url: str, auth: str | None) -> httpx2.Response:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    return httpx2.post(url, json=body, headers=headers)


async def test_valid_jwt_identifies_the_agent(jwt_gateway: RunningGateway, signing_key: rsa.RSAPrivateKey) -> None:
    async with mcp_client(jwt_gateway.url, token(signing_key)) as c:
        result = await c.call_tool("echo__echo", {"text": "signed"})
        assert result.content[0].text == "signed"  # type: ignore[union-attr]
    decisions = [r for r in jwt_gateway.audit_records() if r["type"] == "decision" and r["action"] == "tools/call"]
    assert decisions[-1]["agent"] == "jwt-agent-7"
    assert decisions[-1]["auth"] == "jwt"
    assert decisions[-1]["input"]["agent"]["claims"]["sub"] == "jwt-agent-7"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"aud": "someone-else"}, "audience"),
        ({"iss": "https://evil.test"}, "issuer"),
    ],
)
def test_bad_jwts_are_refused(
    jwt_gateway: RunningGateway, signing_key: rsa.RSAPrivateKey, overrides: dict[str, object], reason: str
) -> None:
    r = post_initialize(jwt_gateway.url, "Bearer " + token(signing_key, **overrides))
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'resource_metadata="' in challenge
    assert reason in r.json()["error"]["message"]


def test_jwt_signed_by_another_key_is_refused(jwt_gateway: RunningGateway) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    r = post_initialize(jwt_gateway.url, "Bearer " + token(other))
    assert r.status_code == 401


def test_protected_resource_metadata_names_the_issuer(jwt_gateway: RunningGateway) -> None:
    r = post_initialize(jwt_gateway.url, None)
    assert r.status_code == 401
    url = r.headers["www-authenticate"].split('resource_metadata="')[1].split('"')[0]
    meta = httpx2.get(url).json()
    assert meta["authorization_servers"] == [ISSUER]
    assert meta["resource"].endswith("/mcp")


def test_bad_api_key_is_refused_counted_and_audited(jwt_gateway: RunningGateway) -> None:
    before = len(jwt_gateway.audit_records())
    r = post_initialize(jwt_gateway.url, "Bearer not-a-key")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer ")
    assert "not-a-key" not in r.text
    records = jwt_gateway.audit_records()[before:]
    assert [x["reason"] for x in records if x["type"] == "auth_failure"] == ["bad_key"]
    metrics = httpx2.get(jwt_gateway.admin_base + "/metrics").text
    assert 'mcp_gateway_auth_failures_total{reason="bad_key"}' in metrics


def test_missing_credentials_without_anonymous_is_refused(core_gateway: RunningGateway) -> None:
    r = post_initialize(core_gateway.url, None)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="mcp-gateway"'
    r = post_initialize(core_gateway.url, "Basic dXNlcjpwYXNz")
    assert r.status_code == 401


async def test_anonymous_identity_when_configured(tmp_path: Path) -> None:
    extra = '[identity.anonymous]\nagent = "anonymous"\nteam = "research"\nroles = []\n'
    upstreams = stdio_upstream("time", ["mcp-server-time", "--local-timezone", "UTC"])
    port = free_port()
    gw = start_gateway(tmp_path, default_config(port, tmp_path, upstreams, extra), port)
    try:
        async with mcp_client(gw.url, None) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert "time__get_current_time" in names
        # Bad credentials are still refused even with anonymous access on.
        assert post_initialize(gw.url, "Bearer wrong").status_code == 401
        assert post_initialize(gw.url, f"Bearer {KEYS['ci-bot'][2]}").status_code == 200
    finally:
        gw.stop()
    decisions = [r for r in gw.audit_records() if r["type"] == "decision"]
    assert decisions and decisions[0]["agent"] == "anonymous" and decisions[0]["auth"] == "anonymous"


def test_session_of_one_agent_is_not_usable_by_another(core_gateway: RunningGateway) -> None:
    r = post_initialize(core_gateway.url, f"Bearer {KEYS['ci-bot'][2]}")
    sid = r.headers["mcp-session-id"]
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Mcp-Session-Id": sid,
        "MCP-Protocol-Version": "2025-11-25",
    }
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    researcher = {**headers, "Authorization": f"Bearer {KEYS['researcher'][2]}"}
    other = httpx2.post(core_gateway.url, json=body, headers=researcher)
    assert other.status_code == 404
    unknown = httpx2.post(
        core_gateway.url,
        json=body,
        headers={**headers, "Mcp-Session-Id": "0" * 32, "Authorization": f"Bearer {KEYS['researcher'][2]}"},
    )
    assert unknown.status_code == 404
