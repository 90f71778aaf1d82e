"""The ``[fleet]`` and ``[[limits]]`` sections, validated at load (a bad value changes nothing)."""

from __future__ import annotations

import os
import socket
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
MIN_SECRET_BYTES = 32


def default_replica_id() -> str:
    """The host name (a pod's name in Kubernetes), cut to what a replica id may hold."""
    name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname())[:63].strip("-.")
    return name or "replica"


class FleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    redis_url: str
    """redis://[user:password@]host:port/db or rediss://... (TLS) or unix:///path."""
    replica_id: Annotated[str, Field(pattern=_ID)] = Field(default_factory=default_replica_id)
    advertise: str
    """The URL other replicas reach this one's agent listener at, e.g. http://10.0.3.7:8080."""
    heartbeat_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    ttl_s: Annotated[float, Field(gt=0, le=600)] = 6.0
    """A replica whose heartbeat is older than this is dead: its agents move to the live ones."""
    secret: str | None = None
    secret_file: str | None = None
    """The inter-replica secret (at least 32 bytes); the same on every replica. Prefer a file (a Kubernetes Secret)."""
    hop_connect_timeout_s: Annotated[float, Field(gt=0, le=30)] = 3.0
    """A hop to an owner that does not accept the connection within this long is given up and re-routed."""
    hop_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 300.0
    """The longest wait for a forwarded POST's answer to begin (a GET stream waits as long as it is open)."""
    on_redis_error: Literal["deny", "local"] = "deny"
    """Limits when Redis cannot be reached: refuse the request ("deny") or count on this replica alone ("local")."""
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = "mcpgw"

    @field_validator("advertise")
    @classmethod
    def _advertise(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/") or u.query:
            raise ValueError("must be an http(s)://host:port URL with no path (this replica's agent listener)")
        return v.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, v: str) -> str:
        if urlsplit(v).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return v

    @model_validator(mode="after")
    def _check(self) -> FleetConfig:
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError("set exactly one of secret and secret_file (the inter-replica secret)")
        if self.secret is not None and len(self.secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"secret must be at least {MIN_SECRET_BYTES} bytes")
        if self.ttl_s < 2 * self.heartbeat_s:
            raise ValueError("ttl_s must be at least twice heartbeat_s (one lost heartbeat must not evict a replica)")
        return self

    def secret_bytes(self, base_dir: str | os.PathLike[str]) -> bytes:
        if self.secret is not None:
            return self.secret.encode()
        path = os.path.join(base_dir, self.secret_file or "")
        return open(path, "rb").read().strip()


class LimitConfig(BaseModel):
    """One ``[[limits]]`` entry: which requests it counts (globs, all must match) and its bounds (any subset)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=_ID)]
    agents: list[str] = ["*"]
    teams: list[str] = ["*"]
    tools: list[str] | None = None
    """Globs over ``<upstream>__<tool>``; set, the limit counts tool calls only; unset, every request kind."""
    calls_per_second: Annotated[float, Field(gt=0, le=1e6)] | None = None
    burst: Annotated[int, Field(gt=0, le=10**9)] | None = None
    """Token-bucket size for calls_per_second (default: one second's worth, at least 1)."""
    calls_per_minute: Annotated[int, Field(gt=0, le=10**9)] | None = None
    calls_per_day: Annotated[int, Field(gt=0, le=10**12)] | None = None
    concurrent_calls: Annotated[int, Field(gt=0, le=10**6)] | None = None
    sessions: Annotated[int, Field(gt=0, le=10**6)] | None = None
    """Open 2025-era sessions per agent (counted on the agent's owning replica)."""

    @model_validator(mode="after")
    def _check(self) -> LimitConfig:
        bounds = (
            self.calls_per_second,
            self.calls_per_minute,
            self.calls_per_day,
            self.concurrent_calls,
            self.sessions,
        )
        if all(b is None for b in bounds):
            raise ValueError(
                "a limit needs at least one of calls_per_second, calls_per_minute, calls_per_day, "
                "concurrent_calls, sessions"
            )
        if self.burst is not None and self.calls_per_second is None:
            raise ValueError("burst needs calls_per_second")
        if self.sessions is not None and self.tools is not None:
            raise ValueError("sessions cannot be limited per tool")
        return self
