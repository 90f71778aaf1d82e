"""Every claim set a signature covers gives an identity or a 401 with a recorded reason (never a 500).

Tokens are signed for real (RS256 over hand-written header and payload bytes, so the payload can hold what a
JSON encoder would refuse to write) and sent to the real gateway process over raw HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.conftest import ECHO, RunningGateway, default_config, free_port, mcp_client, start_gateway, stdio_upstream

pytestmark = pytest.mark.anyio
ISSUER = "https://idp.test"
AUDIENCE = "mcp-gateway"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def rs256(header: bytes, payload: bytes, key: rsa.RSAPrivateKey = KEY) -> str:
    signing_input = f"{b64(header)}.{b64(payload)}".encode()
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{b64(signature)}"


def payload(extra: str = "", sub: str = '"jwt-agent"', roles: str = '["ci"]') -> bytes:
    exp = int(time.time()) + 86_400  # built at collection: valid however long the suite runs before this test
    return (
        f'{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":{sub},"team":"platform","roles":{roles},"exp":{exp}{extra}}}'
    ).encode()


HEADER = b'{"alg":"RS256","typ":"JWT","kid":"k1"}'


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("tokens")
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
    rsa_jwk.update(kid="k1", use="sig", alg="RS256")
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key()))
    ec_jwk.update(kid="k2", use="sig", alg="ES256")
    (workdir / "jwks.json").write_text(json.dumps({"keys": [rsa_jwk, ec_jwk]}))
    extra = f'[identity.jwt]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\njwks_file = "jwks.json"\n'
    port = free_port()
    g = start_gateway(workdir, default_config(port, workdir, stdio_upstream("echo", ECHO), extra), port)
    yield g
    g.stop()


def post(gw: RunningGateway, authorization: str) -> httpx2.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    return httpx2.post(
        gw.url, json=body, headers={"Accept": "application/json, text/event-stream", "Authorization": authorization}
    )


def hs256_with_public_key() -> str:
    """Algorithm confusion: HS256 keyed with the bytes of the RSA public key the gateway trusts."""
    pem = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = (b64(b'{"alg":"HS256","kid":"k1"}') + "." + b64(payload())).encode()
    return f"{signing_input.decode()}.{b64(hmac.new(pem, signing_input, hashlib.sha256).digest())}"


REFUSED = {
    "integer 2**70": rs256(HEADER, payload(f',"n":{2**70}')),
    "integer -2**64": rs256(HEADER, payload(f',"n":{-(2**64)}')),
    "number 1e400": rs256(HEADER, payload(',"n":1e400')),
    "NaN": rs256(HEADER, payload(',"n":NaN')),
    "exp 1e400": rs256(HEADER, payload().replace(b'"exp":', b'"exp":1e400,"x":')),
    "exp as a string": rs256(
        HEADER, payload().replace(b'"exp":', b'"x":').replace(b"}", f',"exp":"{int(time.time()) + 86_400}"}}'.encode())
    ),
    "exp as a float": rs256(HEADER, payload().replace(b"}", b".5}")),
    "nbf 1e400": rs256(HEADER, payload(',"nbf":1e400')),
    "iat as a list": rs256(HEADER, payload(',"iat":[1]')),
    "duplicate sub": rs256(HEADER, payload(',"sub":"admin"')),
    "not UTF-8": rs256(HEADER, payload(',"n":"\xff"').replace(b"\xc3\xbf", b"\xff")),
    "lone surrogate": rs256(HEADER, payload(',"n":"\\ud800"')),
    "nested 20 deep": rs256(HEADER, payload(',"n":' + "[" * 20 + "]" * 20)),
    "nested 5000 deep": rs256(HEADER, payload(',"n":' + "[" * 5000 + "]" * 5000)),
    "sub an integer": rs256(HEADER, payload(sub="7")),
    "sub an object": rs256(HEADER, payload(sub='{"id":"x"}')),
    "sub with a newline": rs256(HEADER, payload(sub='"a\\nINFO forged"')),
    "sub 1000 characters": rs256(HEADER, payload(sub='"' + "a" * 1000 + '"')),
    "roles an object": rs256(HEADER, payload(roles='{"admin":true}')),
    "roles of 1000 items": rs256(HEADER, payload(roles=json.dumps(["r"] * 1000))),
    "role with a no-break space": rs256(HEADER, payload(roles='"user\\u00a0admin"')),
    "role with a newline": rs256(HEADER, payload(roles='["user\\nadmin"]')),
    "role string with a tab": rs256(HEADER, payload(roles='"user\\tadmin"')),
    "roles a number": rs256(HEADER, payload(roles="1")),
    "team a list": rs256(HEADER, payload(',"team":["x"]').replace(b'"team":"platform",', b"")),
    "payload a list": rs256(HEADER, b"[1]"),
    "header a list": rs256(b"[1]", payload()),
    "kid a list": rs256(b'{"alg":"RS256","kid":["k1"]}', payload()),
    "kid an object": rs256(b'{"alg":"RS256","kid":{"a":1}}', payload()),
    "kid unknown": rs256(b'{"alg":"RS256","kid":"zz"}', payload()),
    "no kid with two keys": rs256(b'{"alg":"RS256"}', payload()),
    "alg none": b64(b'{"alg":"none","kid":"k1"}') + "." + b64(payload()) + ".",
    "HS256 keyed with the RSA public key": hs256_with_public_key(),
    "ES256 header on the RSA key": rs256(b'{"alg":"ES256","kid":"k1"}', payload()),
    "RS256 header on the EC key": rs256(b'{"alg":"RS256","kid":"k2"}', payload()),
    "deep header": rs256(b"[" * 5000 + b"]" * 5000, payload()),
    "overlong token": rs256(HEADER, payload(',"pad":"' + "a" * 20000 + '"')),
    "bad base64": "a.b.c",
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_odd_signed_claims_get_a_recorded_401(gw: RunningGateway, name: str) -> None:
    before = len(gw.audit_records())
    r = post(gw, "Bearer " + REFUSED[name])
    assert r.status_code == 401, (name, r.status_code, r.text[:300])
    message = r.json()["error"]["message"]
    assert "Traceback" not in message and "codec" not in message and "recursion" not in message
    records = [x for x in gw.audit_records()[before:] if x["type"] == "auth_failure"]
    assert len(records) == 1 and records[0]["reason"] in {"bad_token", "bad_claims", "malformed"}, records


def test_the_same_claims_well_formed_identify_the_agent(gw: RunningGateway) -> None:
    """Positive control for the table above: the same key and shape, sane values."""
    for token in (
        rs256(HEADER, payload(f',"n":{2**62},"f":1.5,"deep":' + "[" * 10 + "]" * 10)),
        jwt.encode(json.loads(payload()), EC_KEY, algorithm="ES256", headers={"kid": "k2"}),
    ):
        r = post(gw, "Bearer " + token)
        assert r.status_code == 200, r.text


async def test_roles_string_is_split_on_ascii_spaces_only(gw: RunningGateway) -> None:
    token = rs256(HEADER, payload(roles='"ci reader"'))
    async with mcp_client(gw.url, token) as c:
        await c.call_tool("echo__echo", {"text": "x"})
    decision = [r for r in gw.audit_records() if r["type"] == "decision" and r["action"] == "tools/call"][-1]
    assert decision["input"]["agent"]["roles"] == ["ci", "reader"]
