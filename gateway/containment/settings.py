"""The ``[containment]`` section of the configuration: where workspaces live and the named profiles.

Only validation of shape and obvious contradictions happens here (at config load, reported as
``file: key: what is wrong``); whether a profile can be enforced on this host is the probe's job at start.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_HOSTPORT = re.compile(r"^(\*\.)?[A-Za-z0-9_.\-]+:\d{1,5}$|^\[[0-9A-Fa-f:.]+\]:\d{1,5}$")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PLACEHOLDERS = frozenset({"workspace", "agent"})

Tier = Literal["none", "process", "sandbox"]
Network = Literal["none", "allowlist", "host"]
TIER_ORDER = {"none": 0, "process": 1, "sandbox": 2}
NETWORK_ORDER = {"none": 0, "allowlist": 1, "host": 2}
LIMITS = ("memory_mb", "pids", "cpu_seconds", "timeout_s", "max_file_mb", "open_files")
MXC_FIELDS = ("read_only", "read_write", "deny", "network", "allow_hosts", "env", "timeout_s")
"""Fields an MXC policy provides: a profile that loads one must not set them in TOML as well."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_placeholders(value: str) -> str:
    for name in _PLACEHOLDER.findall(value):
        if name not in PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {{{name}}} (known: {{workspace}}, {{agent}})")
    return value


def check_path(value: str, relative: bool = False) -> str:
    """A profile path: absolute, or starting with {workspace}; in the config file also relative to its directory."""
    check_placeholders(value)
    if not value or "\x00" in value:
        raise ValueError("paths must be non-empty and must not contain NUL")
    if not relative and not (value.startswith("/") or value.startswith("{workspace}")):
        raise ValueError(f"{value!r} must be an absolute path or start with {{workspace}}")
    if relative and value.startswith("{") and not value.startswith("{workspace}"):
        raise ValueError(f"{value!r} must start with {{workspace}}, '/', or be relative to the config file")
    return value


def check_env(env: dict[str, str]) -> dict[str, str]:
    """Worker environment variables: names a shell can use, values without NUL (execve cannot pass one)."""
    for k, val in env.items():
        if not _ENV_NAME.match(k):
            raise ValueError(f"{k!r} is not a valid environment variable name")
        if "\x00" in val:
            raise ValueError(f"the value of {k} must not contain NUL")
        check_placeholders(val)
    return env


def check_host(value: str) -> str:
    if not _HOSTPORT.match(value) or not 0 < int(value.rpartition(":")[2]) < 65536:
        raise ValueError(f"{value!r} must be host:port (port 1-65535; '*.domain:port' matches subdomains)")
    return value.lower()


class ProfileConfig(_Model):
    tier: Tier | None = None
    """Required unless an MXC policy names its containment."""
    read_only: list[str] = []
    read_write: list[str] = []
    deny: list[str] = []
    network: Network = "none"
    allow_hosts: list[str] = []
    env: dict[str, str] = {}
    memory_mb: Annotated[int, Field(gt=0, le=1 << 20)] = 512
    pids: Annotated[int, Field(gt=0, le=1 << 22)] = 128
    cpu_seconds: Annotated[float, Field(gt=0, le=86400)] = 60.0
    timeout_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    max_file_mb: Annotated[int, Field(gt=0, le=1 << 30)] = 1024
    open_files: Annotated[int, Field(ge=16, le=1 << 20)] = 1024
    subprocesses: bool = True
    mxc_policy: str | None = None
    """Path to a Microsoft MXC sandbox-policy JSON file providing paths, network, env and timeout."""

    @field_validator("read_only", "read_write", "deny")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        return [check_path(p, relative=True) for p in v]

    @field_validator("allow_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        return [check_host(h) for h in v]

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v)

    @model_validator(mode="after")
    def _consistent(self) -> ProfileConfig:
        if self.mxc_policy is not None:
            both = sorted(f for f in MXC_FIELDS if f in self.model_fields_set)
            if both:
                raise ValueError(f"set {', '.join(both)} in the MXC policy or here, not both (mxc_policy is set)")
            return self
        if self.tier is None:
            raise ValueError("tier is required: 'none', 'process' or 'sandbox'")
        if self.allow_hosts and self.network != "allowlist":
            raise ValueError("allow_hosts needs network = 'allowlist'")
        return self


class ContainmentConfig(_Model):
    workspace_root: str = "var/workspaces"
    """{workspace} = <workspace_root>/<agent>, created on first use and owned by the agent's own uid."""
    runtime_dir: str | None = None
    """Where egress sockets live; default: a private directory made under /tmp at start."""
    uid_base: Annotated[int, Field(ge=1000, le=(1 << 31) - 1)] = 200000
    uid_count: Annotated[int, Field(ge=1, le=1 << 20)] = 10000
    """Workers of each agent run as their own uid from [uid_base, uid_base + uid_count) when the gateway is root."""
    idle_timeout_s: Annotated[float, Field(gt=0, le=86400)] = 300.0
    max_workers: Annotated[int, Field(gt=0, le=100000)] = 64
    max_output_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 65536
    """Built-in tool output (stdout, stderr, file contents) is truncated at this size."""
    max_answer_bytes: Annotated[int, Field(ge=4096, le=1 << 31)] | None = None
    """The serialized answer of a built-in tool call (text and structured copies, JSON escaping included) is at
    most this many bytes; default 2 * max_output_bytes + 8192 (room for both copies of a full output)."""
    max_workspace_mb: Annotated[int, Field(ge=1, le=1 << 24)] | None = None
    """Per-agent workspace quota: each workspace is a loop-mounted file system of this size (needs root)."""
    helper_python: str = "/usr/bin/python3"
    """A world-readable Python 3 that runs the in-sandbox helper (Landlock, seccomp, egress bridge)."""
    profiles: dict[Annotated[str, Field(pattern=_NAME)], ProfileConfig] = {}

    @property
    def answer_limit(self) -> int:
        return self.max_answer_bytes or 2 * self.max_output_bytes + 8192

    @field_validator("helper_python")
    @classmethod
    def _abs(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path")
        return v
