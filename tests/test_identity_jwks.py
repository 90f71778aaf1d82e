"""JWT keys the gateway cannot use are configuration errors (check-config, serve, identity reload), named."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import REPO, gateway_cli

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public(kid: str | None) -> dict[str, object]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
    jwk.update(use="sig", alg="RS256")
    if kid is not None:
        jwk["kid"] = kid
    return jwk


PRIVATE = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY)), "kid": "k1"}


@pytest.mark.parametrize(
    ("jwks", "says"),
    ids=["not-json", "keys-object", "private", "dup-kid", "no-kid", "enc-only", "bad-rsa"],
    argvalues=[
        ("{not json", "is not JSON"),
        (json.dumps({"keys": {}}), "is not a JWKS"),
        (json.dumps({"keys": [PRIVATE]}), "holds private or symmetric key material"),
        (json.dumps({"keys": [public("k1"), public("k1")]}), "two signing keys have the kid 'k1'"),
        (json.dumps({"keys": [public("k1"), public(None)]}), "a key has no kid"),
        (json.dumps({"keys": [{**public("k1"), "use": "enc"}]}), "has no signing key"),
        (json.dumps({"keys": [{"kty": "RSA", "kid": "x", "n": "AQAB"}]}), "has no usable key"),
    ],
)
def test_unusable_jwks_is_a_config_error(tmp_path: Path, jwks: str, says: str) -> None:
    (tmp_path / "jwks.json").write_text(jwks)
    (tmp_path / "g.toml").write_text(
        f'[policy]\npath = "{REPO / "rego"}"\n[identity.jwt]\nissuer = "i"\naudience = "a"\njwks_file = "jwks.json"\n'
    )
    r = gateway_cli("check-config", str(tmp_path / "g.toml"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"identity.jwt.jwks_file: {tmp_path / 'jwks.json'} {says}" in r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_a_good_jwks_passes(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [public("k1"), public("k2")]}))
    (tmp_path / "g.toml").write_text(
        f'[policy]\npath = "{REPO / "rego"}"\n[identity.jwt]\nissuer = "i"\naudience = "a"\njwks_file = "jwks.json"\n'
    )
    r = gateway_cli("check-config", str(tmp_path / "g.toml"))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(("secret", "ok"), [("short-secret", False), ("x" * 32, True)])
def test_an_hs256_secret_needs_256_bits(tmp_path: Path, secret: str, ok: bool) -> None:
    (tmp_path / "g.toml").write_text(
        f'[policy]\npath = "{REPO / "rego"}"\n[identity.jwt]\nissuer = "i"\n'
        'audience = "a"\nhs256_secret_env = "T_SECRET"\n'
    )
    r = gateway_cli("check-config", str(tmp_path / "g.toml"), env={**os.environ, "T_SECRET": secret})
    assert (r.returncode == 0) is ok, r.stdout + r.stderr
    assert ok or "shorter than 32 bytes" in r.stdout + r.stderr
    assert secret not in r.stdout + r.stderr  # the secret itself is never printed
