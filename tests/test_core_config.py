"""Bad configuration and bad Rego are refused at start with clear errors, and change nothing."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import REPO, default_config, free_port, gateway_cli, stdio_upstream


def test_shipped_demo_config_is_valid() -> None:
    r = gateway_cli("check-config", str(REPO / "gateway.toml"))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_every_error_is_reported_as_file_key_message(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        """
[server]
listen = "127.0.0.1:99999"
max_request_bytes = -1
colour = "blue"

[[identity.api_keys]]
agent = "a"
team = "t"
sha256 = "not-hex"

[policy]
engine = "magic"

[[upstreams]]
name = "x__y"
transport = "stdio"

[[upstreams]]
name = "web"
transport = "http"
url = "ftp://nowhere"
"""
    )
    r = gateway_cli("check-config", str(cfg))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    expected_keys = [
        "server.listen",
        "server.max_request_bytes",
        "server.colour",
        "identity.api_keys[0].sha256",
        "policy.engine",
        "upstreams[0].name",
        "upstreams[1]",
    ]
    for key in expected_keys:
        assert any(line.startswith(f"{cfg}: {key}") for line in lines), (key, lines)
    assert any("server.colour: unknown key" in line for line in lines)


def test_toml_syntax_error_is_clear(tmp_path: Path) -> None:
    cfg = tmp_path / "syntax.toml"
    cfg.write_text("[server\nlisten = 1")
    r = gateway_cli("check-config", str(cfg))
    assert r.returncode != 0
    assert r.stderr.startswith(f"{cfg}: (syntax):")


def test_invalid_rego_is_rejected_with_file_and_line(tmp_path: Path) -> None:
    policy = tmp_path / "rego"
    policy.mkdir()
    (policy / "gateway.rego").write_text('package gateway\n\nimport rego.v1\n\ndecision := {"allow": true if {\n')
    port = free_port()
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(default_config(port, tmp_path, stdio_upstream("t", ["true"]), policy=policy))
    r = gateway_cli("check-config", str(cfg))
    assert r.returncode != 0
    assert f"{policy / 'gateway.rego'}:5:" in r.stderr
    serve = gateway_cli("serve", "--config", str(cfg))
    assert serve.returncode != 0
    assert f"{policy / 'gateway.rego'}:5:" in serve.stderr
    assert not (tmp_path / "audit.jsonl").exists()  # refused before anything was started or written


def test_missing_policy_dir_and_missing_file(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(default_config(port, tmp_path, "", policy=tmp_path / "nope"))
    r = gateway_cli("check-config", str(cfg))
    assert r.returncode != 0 and "policy.path" in r.stderr and "does not exist" in r.stderr
    r = gateway_cli("check-config", str(tmp_path / "absent.toml"))
    assert r.returncode != 0 and "cannot read" in r.stderr


def test_hash_key_makes_a_key_that_matches_its_digest() -> None:
    r = gateway_cli("hash-key")
    lines = dict(line.split(":", 1) for line in r.stdout.strip().splitlines())
    import hashlib

    assert hashlib.sha256(lines["key"].strip().encode()).hexdigest() == lines["sha256"].strip()
