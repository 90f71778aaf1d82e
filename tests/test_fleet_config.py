"""``[fleet]`` validated at load; the hop proof; rendezvous hashing moves only a dead member's agents."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from gateway.config import ConfigError, parse_config
from gateway.fleet.hop import HopVerifier, sign
from gateway.fleet.membership import Member, rendezvous

SECRET = "s" * 32
GOOD = {"redis_url": "redis://127.0.0.1:6379/0", "advertise": "http://10.0.0.1:8080", "secret": SECRET}


def parse(extra: dict) -> object:
    return parse_config({"policy": {"path": str(REPO / "rego")}, **extra}, "t.toml", Path("."))


@pytest.mark.parametrize(
    ("fleet", "message"),
    [
        ({**GOOD, "secret": "short"}, "at least 32 bytes"),
        ({k: v for k, v in GOOD.items() if k != "secret"}, "exactly one of secret and secret_file"),
        ({**GOOD, "advertise": "10.0.0.1:8080"}, "http(s)://host:port"),
        ({**GOOD, "redis_url": "http://x"}, "redis://"),
        ({**GOOD, "heartbeat_s": 5, "ttl_s": 6}, "twice heartbeat_s"),
        ({**GOOD, "on_redis_error": "allow"}, "fleet.on_redis_error"),
        ({**GOOD, "secret": None, "secret_file": "/nonexistent"}, "fleet.secret_file"),
    ],
)
def test_bad_fleet_config_is_refused(fleet: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse({"fleet": {k: v for k, v in fleet.items() if v is not None}})
    assert message in str(err.value)


def test_good_fleet_config_defaults_replica_id_to_the_host_name() -> None:
    cfg = parse({"fleet": GOOD})
    assert cfg.fleet is not None and cfg.fleet.replica_id and cfg.fleet.on_redis_error == "deny"  # type: ignore[attr-defined]


def test_hop_proof_binds_method_path_body_agent_and_is_not_replayable() -> None:
    secret = SECRET.encode()
    proof = sign(secret, "POST", "/mcp", "", b"{}", "ci-bot", "r1", "10.1.1.1")
    verifier = HopVerifier(secret)
    for tampered in [
        ("GET", "/mcp", b"{}", "ci-bot"),
        ("POST", "/mcp/x", b"{}", "ci-bot"),
        ("POST", "/mcp", b"[]", "ci-bot"),
        ("POST", "/mcp", b"{}", "admin"),
    ]:
        with pytest.raises(ValueError, match="bad signature"):
            verifier.verify(proof, tampered[0], tampered[1], "", tampered[2], tampered[3])
    assert verifier.verify(proof, "POST", "/mcp", "", b"{}", "ci-bot") == ("r1", "10.1.1.1")
    with pytest.raises(ValueError, match="replayed"):
        verifier.verify(proof, "POST", "/mcp", "", b"{}", "ci-bot")
    with pytest.raises(ValueError, match="bad signature"):
        HopVerifier(b"x" * 32).verify(
            sign(secret, "POST", "/mcp", "", b"", "a", "r1", ""), "POST", "/mcp", "", b"", "a"
        )
    old = proof.split(";")
    old[2] = "1000"
    with pytest.raises(ValueError, match="replay window"):
        verifier.verify(";".join(old), "POST", "/mcp", "", b"{}", "ci-bot")


def test_rendezvous_moves_only_the_dead_members_agents() -> None:
    members = [Member(f"r{i}", f"http://h{i}") for i in range(5)]
    agents = [f"agent-{i}" for i in range(2000)]
    before = {a: rendezvous(a, members) for a in agents}
    counts = {m.id: sum(1 for o in before.values() if o == m) for m in members}
    assert all(250 < c < 550 for c in counts.values()), counts
    after = {a: rendezvous(a, members[1:]) for a in agents}
    moved = [a for a in agents if before[a] != after[a]]
    assert moved and all(before[a] == members[0] for a in moved)
