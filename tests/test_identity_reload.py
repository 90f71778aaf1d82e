"""Identity reloads without a restart (issue 11, finding 5): a new API key or JWKS key works after SIGHUP or a
file change; a broken config is refused, counted and logged, and the keys in force keep working."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import ECHO, KEYS, RunningGateway, default_config, free_port, sha, start_gateway, stdio_upstream

ISSUER = "https://idp.test"
AUDIENCE = "mcp-gateway"
NEW_KEY = "key-new-team-bot"
NEW_ENTRY = f'\n[[identity.api_keys]]\nagent = "new-bot"\nteam = "research"\nroles = []\nsha256 = "{sha(NEW_KEY)}"\n'


def status(gw: RunningGateway, bearer: str) -> int:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    return httpx2.post(
        gw.url,
        json=body,
        headers={"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {bearer}"},
    ).status_code


def reloads(gw: RunningGateway, result: str) -> float:
    for line in httpx2.get(gw.admin_base + "/metrics").text.splitlines():
        if line.startswith(f'mcp_gateway_identity_reloads_total{{result="{result}"}}'):
            return float(line.split()[-1])
    return 0.0


def wait_for(check: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def jwks(*keys: tuple[str, rsa.RSAPrivateKey]) -> str:
    out = []
    for kid, key in keys:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        jwk.update(kid=kid, use="sig", alg="RS256")
        out.append(jwk)
    return json.dumps({"keys": out})


def token(key: rsa.RSAPrivateKey, kid: str) -> str:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "jwt-bot", "exp": int(time.time()) + 300}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def test_a_new_key_works_after_the_file_changes(tmp_path: Path) -> None:
    port = free_port()
    config = default_config(port, tmp_path, stdio_upstream("echo", ECHO), "[identity]\nwatch_interval_s = 0.2\n")
    gw = start_gateway(tmp_path, config, port)
    try:
        assert status(gw, NEW_KEY) == 401
        gw.config.write_text(gw.config.read_text() + NEW_ENTRY)
        assert wait_for(lambda: status(gw, NEW_KEY) == 200)
        assert reloads(gw, "success") == 1
        # Revocation is the same path: the key is gone from the file, it no longer authenticates.
        gw.config.write_text(gw.config.read_text().replace(NEW_ENTRY, ""))
        assert wait_for(lambda: status(gw, NEW_KEY) == 401)
        assert status(gw, KEYS["ci-bot"][2]) == 200
    finally:
        gw.stop()


def test_sighup_reloads_keys_and_jwks_and_a_broken_config_keeps_the_old_identity(tmp_path: Path) -> None:
    k1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    k2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "jwks.json").write_text(jwks(("k1", k1)))
    port = free_port()
    extra = (
        f'[identity]\nwatch = false\n[identity.jwt]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n'
        'jwks_file = "jwks.json"\n'
    )
    gw = start_gateway(tmp_path, default_config(port, tmp_path, stdio_upstream("echo", ECHO), extra), port)
    try:
        good = gw.config.read_text()
        assert status(gw, token(k1, "k1")) == 200
        gw.config.write_text(good + NEW_ENTRY)
        (tmp_path / "jwks.json").write_text(jwks(("k1", k1), ("k2", k2)))
        time.sleep(0.5)
        assert status(gw, NEW_KEY) == 401 and status(gw, token(k2, "k2")) == 401  # watch = false: not yet
        os.kill(gw.proc.pid, signal.SIGHUP)
        assert wait_for(lambda: status(gw, NEW_KEY) == 200)
        assert status(gw, token(k2, "k2")) == 200 and status(gw, token(k1, "k1")) == 200
        assert reloads(gw, "success") == 1

        # Broken candidates: a bad sha256, a TOML syntax error, an unreadable JWKS. Each is refused and logged;
        # the keys in force keep working and the key the broken file would add does not.
        for broken_config, broken_jwks in (
            (good + NEW_ENTRY + '\n[[identity.api_keys]]\nagent = "x"\nteam = "t"\nsha256 = "zz"\n', None),
            (good + NEW_ENTRY + "\n[identity.jwt\n", None),
            (good + NEW_ENTRY.replace("new-bot", "other-bot").replace(sha(NEW_KEY), sha("key-other")), "{not json"),
        ):
            refused = reloads(gw, "refused")
            gw.config.write_text(broken_config)
            if broken_jwks is not None:
                (tmp_path / "jwks.json").write_text(broken_jwks)
            os.kill(gw.proc.pid, signal.SIGHUP)
            assert wait_for(lambda r=refused: reloads(gw, "refused") == r + 1)  # type: ignore[misc]
            assert gw.proc.poll() is None
            assert status(gw, NEW_KEY) == 200 and status(gw, KEYS["admin"][2]) == 200
            assert status(gw, token(k2, "k2")) == 200
            assert status(gw, "key-other") == 401
        assert "identity reload (SIGHUP) refused, the serving identity stays" in gw.log.read_text()
    finally:
        gw.stop()


def test_sighup_reaches_both_the_policy_and_the_identity_reload(tmp_path: Path) -> None:
    """One SIGHUP handler fans out: the policy reload still happens when the identity watcher listens too."""
    port = free_port()
    config = default_config(port, tmp_path, stdio_upstream("echo", ECHO), "[identity]\nwatch = false\n")
    gw = start_gateway(tmp_path, config, port)
    try:
        os.kill(gw.proc.pid, signal.SIGHUP)
        assert wait_for(lambda: reloads(gw, "unchanged") == 1)
        assert wait_for(lambda: "policy reload (SIGHUP)" in gw.log.read_text(), 60)
        assert gw.proc.poll() is None
    finally:
        gw.stop()
