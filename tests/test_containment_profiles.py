"""Containment profiles: config validation, MXC import, per-call narrowing (never widening), agent keys."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from gateway.containment.mxc import MxcError, convert
from gateway.containment.profile import (
    NarrowingError,
    Profile,
    agent_key,
    build_profile,
    is_within,
    narrow,
    paths_for,
)
from gateway.containment.settings import ProfileConfig

STRICT = """
[containment.profiles.strict]
tier = "sandbox"
read_only = ["/usr", "/etc/ssl"]
read_write = ["{workspace}"]
deny = ["{workspace}/.secrets"]
network = "none"
env = { LANG = "C.UTF-8" }
memory_mb = 256
pids = 64
cpu_seconds = 10
timeout_s = 30
max_file_mb = 64
open_files = 256
subprocesses = true
"""


REPO = Path(__file__).resolve().parent.parent
POLICY = f'[policy]\npath = "{REPO / "tests" / "containment_policy"}"\n'


def load(text: str, base: Path = Path("/nonexistent")) -> object:
    return parse_config(tomllib.loads(POLICY + text), "g.toml", base)


def errors(text: str, base: Path = Path("/nonexistent")) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load(text, base)
    return exc.value.errors


def test_the_issue_example_config_loads() -> None:
    cfg = load(STRICT + '[[upstreams]]\nname = "sh"\ntransport = "builtin"\ntools = "shell"\ncontainment = "strict"\n')
    assert cfg.containment is not None  # type: ignore[attr-defined]
    assert cfg.upstreams[0].containment == "strict"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[upstreams]]\nname = "sh"\ntransport = "builtin"\ntools = "shell"\n', "need tools"),
        (
            '[[upstreams]]\nname = "x"\ntransport = "stdio"\ncommand = ["a"]\ncontainment = "nope"\n',
            "'nope' is not defined",
        ),
        (
            '[[upstreams]]\nname = "x"\ntransport = "http"\nurl = "http://a/"\ncontainment = "strict"\n',
            "containment is for stdio and builtin",
        ),
        (
            '[containment.profiles.p]\ntier = "process"\ndeny = ["/x"]\nnetwork = "host"\n',
            "tier 'process' cannot enforce",
        ),
        ('[containment.profiles.p]\ntier = "process"\n', "network = 'none'"),
        ('[containment.profiles.p]\ntier = "sandbox"\nread_only = ["{agent}/x"]\n', "must start with {workspace}"),
        ('[containment.profiles.p]\ntier = "sandbox"\nread_write = ["{home}/x"]\n', "unknown placeholder"),
        ('[containment.profiles.p]\ntier = "sandbox"\nallow_hosts = ["a.example:443"]\n', "allow_hosts needs"),
        ('[containment.profiles.p]\ntier = "sandbox"\nnetwork = "allowlist"\nallow_hosts = ["no-port"]\n', "host:port"),
        ('[containment.profiles.p]\nread_only = ["/usr"]\n', "tier is required"),
        ('[containment.profiles.p]\ntier = "sandbox"\nmemory_mb = 0\n', "greater than 0"),
        ('[containment.profiles.p]\ntier = "sandbox"\nbogus = 1\n', "unknown key"),
        ('[containment.profiles.p]\ntier = "sandbox"\nenv = { A = "x\\u0000y" }\n', "must not contain NUL"),
        ('[containment.profiles.p]\ntier = "sandbox"\nenv = { 1A = "x" }\n', "not a valid environment variable name"),
        (
            '[[upstreams]]\nname = "x"\ntransport = "stdio"\ncommand = ["a"]\ncontainment = "strict"\n'
            'session_mode = "per_session"\n',
            "not available for contained upstreams",
        ),
    ],
)
def test_bad_profiles_are_reported_as_file_key_what(text: str, expected: str) -> None:
    errs = errors(STRICT + text)
    assert any(e.startswith("g.toml: ") and expected in e for e in errs), errs


def test_mxc_profile_cannot_also_set_its_fields(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"process": {}}))
    errs = errors('[containment.profiles.m]\nmxc_policy = "p.json"\nread_only = ["/usr"]\n', tmp_path)
    assert any("set read_only in the MXC policy or here, not both" in e for e in errs), errs


def test_mxc_errors_name_the_profile(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"process": {}, "gui": True}))
    errs = errors('[containment.profiles.m]\nmxc_policy = "p.json"\n', tmp_path)
    assert errs == ["g.toml: containment.profiles.m: mxc_policy: unknown MXC field(s): gui"]


MXC_DOC = {
    "$schema": "https://github.com/microsoft/mxc/schemas/stable/mxc-config.schema.0.8.0-alpha.json",
    "version": "0.8.0-alpha",
    "containment": "bubblewrap",
    "filesystem": {
        "readwritePaths": ["{workspace}"],
        "readonlyPaths": ["/usr", "/etc/ssl"],
        "deniedPaths": ["{workspace}/.ssh"],
    },
    "network": {"allowedHosts": ["pkg.example.org:443", "api.example.com"], "blockedHosts": ["api.example.com"]},
    "process": {"commandLine": "python3 server.py", "env": ["LANG=C.UTF-8", "MODE=strict"], "timeout": 20000},
    "ui": {"clipboard": "none", "disable": True},
}


def test_mxc_maps_onto_a_profile_and_reports_what_it_cannot_enforce() -> None:
    m = convert(MXC_DOC)
    assert m.values["tier"] == "sandbox"
    assert m.values["read_write"] == ["{workspace}"]
    assert m.values["read_only"] == ["/usr", "/etc/ssl"]
    assert m.values["deny"] == ["{workspace}/.ssh"]
    assert m.values["env"] == {"LANG": "C.UTF-8", "MODE": "strict"}
    assert m.values["timeout_s"] == 20.0
    # blockedHosts wins over allowedHosts; a host without a port gets 443 and a note
    assert m.values["network"] == "allowlist"
    assert m.values["allow_hosts"] == ["pkg.example.org:443"]
    notes = " | ".join(m.unsupported)
    assert "ui: UI and clipboard isolation cannot be enforced" in notes
    assert "process.commandLine is ignored" in notes
    assert "has no port" in notes


def test_mxc_network_defaults() -> None:
    assert convert({"process": {}}).values["network"] == "none"
    assert convert({"process": {}, "network": {"defaultPolicy": "allow"}}).values["network"] == "host"
    assert (
        convert({"process": {}, "network": {"egress": {"default": "allow"}, "blockedHosts": ["x"]}}).values["network"]
        == "none"
    )
    cidr = convert({"process": {}, "network": {"egress": {"allow": [{"to": [{"cidr": "10.0.0.0/8"}]}]}}})
    assert cidr.values["network"] == "none"
    assert any("CIDR rules are not enforced" in n for n in cidr.unsupported)


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"process": {}, "filesystem": {"readonlyPaths": "x"}},
        {"process": {"env": ["NOEQUALS"]}},
        {"filesystem": {}},
        {"process": {"timeout": -1}},
        {"process": {"env": ["1A=b"]}},
        {"process": {"env": ["A=b\u0000c"]}},
    ],
)
def test_bad_mxc_documents_are_refused(doc: object) -> None:
    with pytest.raises(MxcError):
        convert(doc)


def strict() -> Profile:
    cfg = ProfileConfig.model_validate(tomllib.loads(STRICT)["containment"]["profiles"]["strict"])
    return build_profile("strict", cfg, Path("."))


def tiny() -> Profile:
    return build_profile(
        "tiny",
        ProfileConfig(
            tier="sandbox",
            read_only=["/usr"],
            read_write=["{workspace}"],
            deny=["{workspace}/.secrets"],
            memory_mb=64,
            pids=16,
            cpu_seconds=2,
            timeout_s=5,
            max_file_mb=8,
            open_files=64,
        ),
        Path("."),
    )


def test_narrowing_applies_and_never_widens() -> None:
    base = strict()
    same = narrow(base, {"memory_mb": 100000, "network": "host", "timeout_s": 1e9, "subprocesses": True}, {})
    assert same == base and not same.narrowed
    ro = narrow(base, {"read_only": True, "network": "none", "memory_mb": 64, "subprocesses": False}, {})
    assert ro.read_write == () and "{workspace}" in ro.read_only
    assert (ro.memory_mb, ro.subprocesses, ro.narrowed) == (64, False, True)
    assert ro.digest != base.digest  # a narrowed call never shares a worker with full-profile calls
    more = narrow(base, {"deny": ["{workspace}/private"]}, {})
    assert more.deny == ("{workspace}/.secrets", "{workspace}/private")


def test_narrowing_to_another_profile_only_when_it_is_narrower() -> None:
    base, small = strict(), tiny()
    assert narrow(base, {"profile": "tiny"}, {"tiny": small}).memory_mb == 64
    with pytest.raises(NarrowingError, match="not narrower"):
        narrow(small, {"profile": "strict"}, {"strict": base})
    ok, why = is_within(base, small)
    assert not ok and "/etc/ssl is not readable in profile tiny" in why


@pytest.mark.parametrize(
    "spec",
    [
        "read_only",
        {"bogus": 1},
        {"read_only": "yes"},
        {"network": "wide"},
        {"memory_mb": -1},
        {"memory_mb": True},
        {"allow_hosts": "x"},
        {"profile": "missing"},
        {"deny": ["relative"]},
    ],
)
def test_malformed_narrowing_fails_closed(spec: object) -> None:
    with pytest.raises(NarrowingError):
        narrow(strict(), spec, {})


def test_relative_profile_paths_are_taken_from_the_config_directory() -> None:
    p = build_profile("p", ProfileConfig(tier="sandbox", read_only=["../lib", "/usr"]), Path("/etc/gw/conf"))
    assert p.read_only == ("/etc/gw/lib", "/usr")


def test_paths_expand_per_agent_and_stay_absolute() -> None:
    p = paths_for(strict(), "/ws/alice", "alice")
    assert p.read_write == ("/ws/alice",)
    assert p.deny == ("/ws/alice/.secrets",)


def test_agent_keys_never_collide_across_identity_kinds() -> None:
    assert agent_key("ci-bot", "api_key") == "ci-bot"
    jwt = agent_key("ci-bot", "jwt")
    assert jwt != "ci-bot" and jwt.startswith("jwt+ci-bot+")
    weird = agent_key("../../etc", "jwt")
    assert "/" not in weird and not weird.startswith(".")
    assert agent_key("a/b", "jwt") != agent_key("a_b", "jwt")


def test_the_contained_example_config_is_valid() -> None:
    from gateway.config import load_config
    from gateway.containment.profile import config_errors

    cfg = load_config(REPO / "examples" / "contained.toml")
    assert cfg.containment is not None
    assert config_errors(cfg.containment, cfg.base_dir, "x") == []
    mxc = build_profile("mxc-readonly", cfg.containment.profiles["mxc-readonly"], cfg.base_dir)
    assert mxc.read_write == () and "{workspace}" in mxc.read_only and mxc.timeout_s == 15.0
