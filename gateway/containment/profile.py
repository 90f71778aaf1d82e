"""Resolved containment profiles: from config (and MXC), per agent (placeholders filled), narrowed per call.

A ``Profile`` is immutable and hashable; its ``digest`` is part of a worker's key, so a call whose policy
narrowed the profile never shares a worker with calls that got the full profile.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson

from gateway.containment.mxc import MxcError, load_mxc
from gateway.containment.settings import (
    LIMITS,
    NETWORK_ORDER,
    TIER_ORDER,
    ProfileConfig,
    check_host,
    check_path,
)


class NarrowingError(ValueError):
    """A policy's ``containment`` narrowing that cannot be applied: the call is refused (fail closed)."""


@dataclass(frozen=True)
class Profile:
    name: str
    tier: str
    read_only: tuple[str, ...] = ()
    read_write: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    network: str = "none"
    allow_hosts: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    memory_mb: int = 512
    pids: int = 128
    cpu_seconds: float = 60.0
    timeout_s: float = 60.0
    max_file_mb: int = 1024
    open_files: int = 1024
    subprocesses: bool = True
    source: str = "config"
    unsupported: tuple[str, ...] = field(default=(), compare=False)
    narrowed: bool = field(default=False, compare=False)

    @cached_property
    def digest(self) -> str:
        """Part of every contained call's worker key: computed once per profile, not per call."""
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.compare}
        return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "network": self.network,
            "memory_mb": self.memory_mb,
            "pids": self.pids,
            "cpu_seconds": self.cpu_seconds,
            "timeout_s": self.timeout_s,
            "subprocesses": self.subprocesses,
            "source": self.source,
            **({"unsupported": list(self.unsupported)} if self.unsupported else {}),
        }


def build_profile(name: str, cfg: ProfileConfig, base_dir: Path) -> Profile:
    """Config (plus its MXC policy, if any) -> Profile. Raises ValueError with a message for the operator."""
    values: dict[str, Any] = cfg.model_dump(exclude={"mxc_policy"})
    unsupported: list[str] = []
    source = "config"
    if cfg.mxc_policy is not None:
        path = Path(cfg.mxc_policy)
        path = path if path.is_absolute() else base_dir / path
        try:
            mxc = load_mxc(path)
        except MxcError as exc:
            raise ValueError(f"mxc_policy: {exc}") from None
        if cfg.tier is not None:
            mxc.values.pop("tier", None)
        values.update(mxc.values)
        unsupported = mxc.unsupported
        source = f"mxc:{path.name}"
        if values.get("tier") is None:
            values["tier"] = "sandbox"

    def resolve(paths: list[str]) -> tuple[str, ...]:
        """Relative paths are taken from the config file's directory, like every other path in it."""
        return tuple(p if p.startswith(("/", "{")) else os.path.normpath(base_dir / p) for p in paths)

    profile = Profile(
        name=name,
        tier=values["tier"],
        read_only=resolve(values["read_only"]),
        read_write=resolve(values["read_write"]),
        deny=resolve(values["deny"]),
        network=values["network"],
        allow_hosts=tuple(values["allow_hosts"]),
        env=tuple(sorted(values["env"].items())),
        memory_mb=values["memory_mb"],
        pids=values["pids"],
        cpu_seconds=values["cpu_seconds"],
        timeout_s=values["timeout_s"],
        max_file_mb=values["max_file_mb"],
        open_files=values["open_files"],
        subprocesses=values["subprocesses"],
        source=source,
        unsupported=tuple(unsupported),
    )
    check_tier_fit(profile)
    return profile


def check_tier_fit(p: Profile) -> None:
    """Reject profiles that promise what their tier cannot keep (fail closed at config time, not at run time)."""
    if p.allow_hosts and p.network != "allowlist":
        raise ValueError("allow_hosts needs network = 'allowlist'")
    if p.tier == "sandbox":
        return
    problems = []
    if p.network != "host":
        problems.append(f"network = {p.network!r} (tier {p.tier!r} has no network isolation: say network = 'host')")
    if p.read_only or p.deny:
        problems.append("read_only/deny paths (the worker sees whatever its uid may see)")
    extra_rw = [x for x in p.read_write if x != "{workspace}"]
    if extra_rw:
        problems.append(f"read_write paths other than {{workspace}}: {', '.join(extra_rw)}")
    if not p.subprocesses:
        problems.append("subprocesses = false (needs the sandbox tier's seccomp filter)")
    if problems:
        raise ValueError(f"tier {p.tier!r} cannot enforce: " + "; ".join(problems) + ". Use tier = 'sandbox'")


# --- per agent -------------------------------------------------------------------------------------------


def fill(value: str, workspace: str, agent: str) -> str:
    return value.replace("{workspace}", workspace).replace("{agent}", agent)


def fill_path(value: str, workspace: str, agent: str) -> str:
    """Expand placeholders and normalise lexically: the result is absolute and has no '..' left."""
    path = os.path.normpath(fill(value, workspace, agent))
    if not path.startswith("/"):
        raise ValueError(f"path {value!r} does not expand to an absolute path")
    return path


@dataclass(frozen=True)
class AgentPaths:
    """A profile's paths for one agent, as host paths (the sandbox sees them at the same place)."""

    read_only: tuple[str, ...]
    read_write: tuple[str, ...]
    deny: tuple[str, ...]


def paths_for(p: Profile, workspace: str, agent: str) -> AgentPaths:
    return AgentPaths(
        tuple(fill_path(x, workspace, agent) for x in p.read_only),
        tuple(fill_path(x, workspace, agent) for x in p.read_write),
        tuple(fill_path(x, workspace, agent) for x in p.deny),
    )


def env_for(p: Profile, extra: dict[str, str], workspace: str, agent: str) -> dict[str, str]:
    env = {k: fill(v, workspace, agent) for k, v in p.env}
    env.update({k: fill(v, workspace, agent) for k, v in extra.items()})
    return env


# --- narrowing ---------------------------------------------------------------------------------------------

_NARROW_KEYS = {"profile", "read_only", "network", "allow_hosts", "deny", "subprocesses", *LIMITS}


def within(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def is_within(candidate: Profile, base: Profile) -> tuple[bool, str]:
    """Is ``candidate`` at most as permissive as ``base`` in every dimension? (reason when not)"""
    if TIER_ORDER[candidate.tier] < TIER_ORDER[base.tier]:
        return False, f"tier {candidate.tier} is weaker than {base.tier}"
    if candidate.tier != base.tier and candidate.tier == "sandbox" and base.tier != "sandbox":
        return False, "cannot switch tier"
    for path in candidate.read_write:
        if not within(path, base.read_write):
            return False, f"read_write {path} is not writable in profile {base.name}"
    for path in candidate.read_only:
        if not within(path, base.read_only + base.read_write):
            return False, f"read_only {path} is not readable in profile {base.name}"
    for path in base.deny:
        if not within(path, candidate.deny):
            return False, f"deny {path} of profile {base.name} is not kept"
    if NETWORK_ORDER[candidate.network] > NETWORK_ORDER[base.network]:
        return False, f"network {candidate.network} is wider than {base.network}"
    if (
        candidate.network == "allowlist"
        and base.network == "allowlist"
        and not set(candidate.allow_hosts) <= set(base.allow_hosts)
    ):
        return False, "allow_hosts adds hosts"
    for limit in LIMITS:
        if getattr(candidate, limit) > getattr(base, limit):
            return False, f"{limit} {getattr(candidate, limit)} is above {getattr(base, limit)}"
    if candidate.subprocesses and not base.subprocesses:
        return False, "subprocesses are not allowed in the configured profile"
    return True, ""


def narrow(base: Profile, spec: Any, profiles: dict[str, Profile]) -> Profile:
    """Apply a policy decision's ``containment`` object. Never widens: wider values are clamped to the base.

    Malformed input raises NarrowingError (the call is refused): a policy bug must not run a call unconfined.
    """
    if spec is None:
        return base
    if not isinstance(spec, dict):
        raise NarrowingError("containment narrowing must be an object")
    unknown = sorted(set(spec) - _NARROW_KEYS)
    if unknown:
        raise NarrowingError(f"unknown containment key(s) {', '.join(unknown)}")
    p = base
    if "profile" in spec:
        other = profiles.get(spec["profile"]) if isinstance(spec["profile"], str) else None
        if other is None:
            raise NarrowingError(f"containment profile {spec['profile']!r} is not configured")
        ok, why = is_within(other, base)
        if not ok:
            raise NarrowingError(f"containment profile {other.name!r} is not narrower than {base.name!r}: {why}")
        p = replace(other, name=base.name if other.name == base.name else f"{base.name}>{other.name}")
    changes: dict[str, Any] = {}
    if "read_only" in spec:
        if not isinstance(spec["read_only"], bool):
            raise NarrowingError("containment.read_only must be true or false")
        if spec["read_only"]:
            changes["read_only"] = tuple(dict.fromkeys(p.read_only + p.read_write))
            changes["read_write"] = ()
    if "network" in spec:
        net = spec["network"]
        if net not in NETWORK_ORDER:
            raise NarrowingError("containment.network must be 'none', 'allowlist' or 'host'")
        if NETWORK_ORDER[net] < NETWORK_ORDER[p.network]:
            changes["network"] = net
            if net != "allowlist":
                changes["allow_hosts"] = ()
    if "allow_hosts" in spec:
        hosts = spec["allow_hosts"]
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise NarrowingError("containment.allow_hosts must be a list of host:port strings")
        try:
            wanted = {check_host(h) for h in hosts}
        except ValueError as exc:
            raise NarrowingError(f"containment.allow_hosts: {exc}") from None
        changes["allow_hosts"] = tuple(h for h in changes.get("allow_hosts", p.allow_hosts) if h in wanted)
    if "deny" in spec:
        extra = spec["deny"]
        if not isinstance(extra, list) or not all(isinstance(d, str) for d in extra):
            raise NarrowingError("containment.deny must be a list of paths")
        try:
            changes["deny"] = tuple(dict.fromkeys(p.deny + tuple(check_path(d) for d in extra)))
        except ValueError as exc:
            raise NarrowingError(f"containment.deny: {exc}") from None
    if "subprocesses" in spec:
        if not isinstance(spec["subprocesses"], bool):
            raise NarrowingError("containment.subprocesses must be true or false")
        changes["subprocesses"] = p.subprocesses and spec["subprocesses"]
    for limit in LIMITS:
        if limit in spec:
            v = spec[limit]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise NarrowingError(f"containment.{limit} must be a positive number")
            current = getattr(p, limit)
            changes[limit] = type(current)(min(current, v)) if isinstance(current, int) else min(current, float(v))
            if isinstance(current, int) and changes[limit] < 1:
                changes[limit] = 1
    if changes.get("network", p.network) == "allowlist" and not changes.get("allow_hosts", p.allow_hosts):
        changes["network"] = "none"
    result = replace(p, **changes)
    if p.tier != "sandbox" and (result.read_only or result.deny or result.network != "host" or not result.subprocesses):
        raise NarrowingError(f"the narrowing needs the sandbox tier; profile {base.name!r} is tier {base.tier!r}")
    if result == base:
        return base
    return replace(result, narrowed=True)


_SAFE_AGENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def agent_key(agent_id: str, auth: str) -> str:
    """The directory name and worker key of an agent: its id for API-key agents, a hashed form otherwise.

    Ids from JWTs can hold any character and could collide with configured agents, so they get a prefix
    (``+`` cannot appear in a configured agent name) and a digest.
    """
    if auth in ("api_key", "anonymous") and _SAFE_AGENT.match(agent_id) and ".." not in agent_id:
        return agent_id
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", agent_id)[:40].strip(".") or "agent"
    digest = hashlib.sha256(f"{auth}:{agent_id}".encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{auth}+{safe}+{digest}"


def config_errors(cfg: Any, base_dir: Path, source: str) -> list[str]:
    """Profile problems found at config load (MXC files, tier contradictions), as ``file: key: what`` lines."""
    errors = []
    for name, pcfg in cfg.profiles.items():
        try:
            build_profile(name, pcfg, base_dir)
        except ValueError as exc:
            errors.append(f"{source}: containment.profiles.{name}: {exc}")
    return errors
