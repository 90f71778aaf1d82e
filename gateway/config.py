"""The gateway's TOML configuration, validated once at start.

Every model forbids unknown keys: a misspelt key is an error, never a silently ignored setting.
Errors are reported all at once as ``file: key: what is wrong`` lines.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from connectors.base import DEFAULT_MAX_MESSAGE_BYTES, Limits
from gateway.containment.settings import ContainmentConfig
from gateway.decisionlogs.config import DecisionLogsConfig
from gateway.fleet.config import FleetConfig, LimitConfig
from gateway.names import parse_roles
from gateway.secrets.settings import SecretsConfig

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _host_port(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT with a port from 1 to 65535")
    return v


class ServerConfig(_Model):
    listen: str = "127.0.0.1:8080"
    admin_listen: str = "127.0.0.1:9464"
    """Where /metrics, /readyz and /healthz are served: never on the agents' port (they name every agent)."""
    max_connections: Annotated[int, Field(gt=0)] = 1000
    """Open agent connections at most; past it a new connection gets 503 and is closed (bounds a slowloris)."""
    header_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    """A connection that has not sent a whole request head within this long is closed."""
    max_sessions_per_agent: Annotated[int, Field(gt=0)] = 100
    """Open MCP sessions per agent at most: one agent cannot fill max_sessions for everyone."""
    max_concurrent_calls_per_agent: Annotated[int, Field(gt=0)] = 64
    """MCP requests (POSTs) one agent may have in flight at once; past it HTTP 429."""
    max_request_bytes: Annotated[int, Field(gt=0, le=1 << 30)] = 4 * 1024 * 1024
    allowed_hosts: list[str] | None = None
    """Host headers accepted (DNS-rebinding protection); default: the listen address and localhost."""
    allowed_origins: list[str] | None = None
    trusted_proxies: list[str] = []
    """Addresses or networks of reverse proxies whose ``X-Forwarded-For`` names the agent's address; from anyone
    else the header is ignored and the address is the connection's (gateway/http/clientaddr.py)."""
    session_idle_timeout_s: Annotated[float, Field(gt=0)] = 1800.0
    max_sessions: Annotated[int, Field(gt=0)] = 10000
    public_url: str | None = None
    """The URL agents use, when it differs from http://listen (used in OAuth resource metadata)."""
    loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    """The event loop (read at start): auto = uvloop when it is installed."""
    http: Literal["auto", "httptools", "h11"] = "auto"
    """The agent listener's HTTP/1.1 parser (read at start): auto = httptools when it is installed."""

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)") from None
        return v

    @field_validator("loop", "http")
    @classmethod
    def _installed(cls, v: str) -> str:
        if v in ("uvloop", "httptools") and not _installed(v):
            raise ValueError(f"{v!r} is not installed (pip install {v}), or choose 'auto'")
        return v

    @property
    def http_parser(self) -> Literal["httptools", "h11"]:
        if self.http == "auto":
            return "httptools" if _installed("httptools") else "h11"
        return self.http

    @field_validator("listen", "admin_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return _host_port(v)

    @model_validator(mode="after")
    def _distinct(self) -> ServerConfig:
        if self.admin_listen == self.listen:
            raise ValueError("admin_listen must differ from listen (the admin endpoints never share the agents' port)")
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def admin_host(self) -> str:
        return self.admin_listen.rpartition(":")[0].strip("[]")

    @property
    def admin_port(self) -> int:
        return int(self.admin_listen.rpartition(":")[2])


def _roles(v: list[str]) -> list[str]:
    """Roles are exact tokens: no whitespace or control characters (see gateway/names.py)."""
    return list(parse_roles(v))


class ApiKeyConfig(_Model):
    agent: Annotated[str, Field(pattern=_NAME)]
    team: Annotated[str, Field(pattern=_NAME)]
    roles: list[str] = []
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]

    _check_roles = field_validator("roles")(_roles)


class AnonymousConfig(_Model):
    agent: Annotated[str, Field(pattern=_NAME)] = "anonymous"
    team: Annotated[str, Field(pattern=_NAME)] = "public"
    roles: list[str] = []

    _check_roles = field_validator("roles")(_roles)


class JwtConfig(_Model):
    issuer: str
    audience: str
    jwks_file: str | None = None
    hs256_secret_env: str | None = None
    agent_claim: str = "sub"
    team_claim: str = "team"
    roles_claim: str = "roles"
    leeway_s: Annotated[float, Field(ge=0, le=300)] = 30.0

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtConfig:
        if (self.jwks_file is None) == (self.hs256_secret_env is None):
            raise ValueError("set exactly one of jwks_file or hs256_secret_env")
        return self


class IdentityConfig(_Model):
    api_keys: list[ApiKeyConfig] = []
    anonymous: AnonymousConfig | None = None
    jwt: JwtConfig | None = None
    watch: bool = True
    """Reload [identity] when the config file (or the JWKS file) changes; SIGHUP reloads it either way."""
    watch_interval_s: Annotated[float, Field(gt=0, le=3600)] = 2.0

    @model_validator(mode="after")
    def _unique(self) -> IdentityConfig:
        seen: set[str] = set()
        for k in self.api_keys:
            if k.sha256.lower() in seen:
                raise ValueError(f"api key of agent {k.agent!r} has the same sha256 as another key")
            seen.add(k.sha256.lower())
        return self


_GLOB = r"^[A-Za-z0-9_.*?!\[\]-]{1,200}$"


class MonitorEntry(_Model):
    """One ``[[policy.monitor]]`` entry: requests it matches that the policy denies are let through, recorded
    as ``would_deny`` (docs/policy.md, "Rolling out a rule"). Globs are shell-style (``*``, ``?``, ``[ab]``)."""

    team: Annotated[str, Field(pattern=_GLOB)] | None = None
    """The agent's team (glob); left out: every team."""
    tool: Annotated[str, Field(pattern=_GLOB)] | None = None
    """``<upstream>__<tool>`` (glob): only tools/call of a matching tool; left out: every request kind."""

    @model_validator(mode="after")
    def _names_something(self) -> MonitorEntry:
        if self.team is None and self.tool is None:
            raise ValueError('a monitor entry needs team or tool (team = "*" monitors everything)')
        return self


class PolicyConfig(_Model):
    engine: Literal["embedded", "regorus", "regopy", "opa"] = "embedded"
    """embedded: regorus's register VM; regorus: its interpreter (strict built-ins, slower); regopy: rego-cpp;
    opa: an OPA server (docs/policy.md, "The embedded engine")."""
    path: str = "rego"
    decision: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")] = "gateway/decision"
    opa_url: str | None = None
    timeout_ms: Annotated[int, Field(gt=0, le=60000)] = 200
    threads: Annotated[int, Field(ge=0, le=64)] = 4
    """regopy engine: evaluator threads (rego-cpp releases the GIL); 0 evaluates on the event loop."""
    max_argument_bytes: Annotated[int, Field(gt=0)] = 262144
    """Arguments larger than this (as JSON) are refused before the policy: it decides on all that is forwarded."""
    max_argument_string: Annotated[int, Field(gt=0)] = 65536
    """Longest argument string (characters); longer is refused (rego-cpp's regex recursion crashes on huge ones)."""
    max_argument_keys: Annotated[int, Field(gt=0)] = 1000
    """Object keys in one request's arguments, all objects together; more is refused."""
    max_argument_items: Annotated[int, Field(gt=0)] = 1000
    """List items in one request's arguments, all lists together; more is refused."""
    max_argument_depth: Annotated[int, Field(gt=0, le=64)] = 32
    """Deepest nesting of objects and lists in the arguments; deeper is refused."""
    threads_per_agent: Annotated[int, Field(ge=0, le=64)] = 0
    """regopy engine: evaluator threads one agent may hold at once (0: half of ``threads``, at least 1)."""
    queue_timeout_ms: Annotated[int, Field(gt=0, le=600000)] | None = None
    """regopy engine: longest wait for a free evaluator (default: 10 x timeout_ms, at least 1 s)."""
    opa_token_env: str | None = None
    """Name of the environment variable holding the bearer token for OPA (the token never goes in the file)."""
    watch: bool = True
    """Reload the embedded policy when its files change, after its table tests pass (SIGHUP reloads it either way)."""
    watch_interval_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    monitor: list[MonitorEntry] = []
    """Monitor mode: what these entries match is decided but not denied (recorded and counted as would_deny)."""
    shadow_path: str | None = None
    """A candidate policy (directory or bundle) evaluated beside the live one, off the call path; disagreements
    are recorded and counted (docs/policy.md, "Shadow revision")."""
    shadow_bundle_url: str | None = None
    """A candidate OPA bundle served over HTTP(S), polled as ``bundle_url`` is (with the same ``bundle_*`` token, key
    and caps), decided beside the live policy like ``shadow_path``; nothing is shadowed until its first bundle."""
    shadow_queue: Annotated[int, Field(gt=0, le=1_000_000)] = 10000
    """Decisions waiting for the shadow policy at most; past it they are dropped and counted, never waited for."""
    bundle_url: str | None = None
    """An OPA bundle (.tar.gz) served over HTTP(S), polled with ETag/If-None-Match (gateway/bundles/); ``path`` is
    then unused. Until the first good bundle arrives every request is denied and /readyz says not ready, unless
    ``bundle_fallback_path`` names a policy to serve meanwhile."""
    bundle_poll_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """Seconds between polls; each wait is drawn from 75-100 % of it (jitter), so a new revision is live within
    one interval plus its download and tests."""
    bundle_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    bundle_token: str | None = None
    """Bearer token for the bundle server; ``${VAR}`` references are read from the environment (never logged)."""
    bundle_token_file: str | None = None
    """A file holding the bearer token (a mounted secret), read again on every poll so a rotation needs no restart."""
    bundle_public_key: str | None = None
    """PEM public key: when set (or ``bundle_public_key_file``), bundles must carry a valid ``.signatures.json``."""
    bundle_public_key_file: str | None = None
    bundle_key_id: str | None = None
    """The key's id: a signature whose JWT names another ``kid`` is refused (OPA's ``signing.keyid``)."""
    bundle_key_algorithm: Literal[
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
    ] = "RS256"
    """The signature algorithm the key is for; the JWT's own ``alg`` must match it (the key, not the token, decides)."""
    bundle_scope: str = ""
    """OPA's signing scope: a signature's ``scope`` claim must equal it."""
    bundle_max_bytes: Annotated[int, Field(gt=0, le=1 << 30)] = 16 << 20
    """Largest bundle download (compressed); a larger answer is cut and refused."""
    bundle_max_unpacked_bytes: Annotated[int, Field(gt=0, le=4 << 30)] = 128 << 20
    """Largest total of the bundle's files once decompressed (tar bombs are refused, never written)."""
    bundle_fallback_path: str | None = None
    """A policy directory or bundle file served from start until the first bundle is fetched (then ready)."""

    @model_validator(mode="after")
    def _bundle(self) -> PolicyConfig:
        if self.shadow_path is not None and self.shadow_bundle_url is not None:
            raise ValueError("set at most one of shadow_path and shadow_bundle_url")
        if self.shadow_bundle_url is not None and not re.match(r"^https?://[^/@\s]+(/\S*)?$", self.shadow_bundle_url):
            raise ValueError(
                "shadow_bundle_url must be http(s)://host[:port]/path, without credentials (use bundle_token)"
            )
        if self.bundle_url is None:
            # a setting that differs from its default, not one merely present: a re-validated dump sets them all
            changed = [
                k
                for k, f in type(self).model_fields.items()
                if k.startswith("bundle_") and getattr(self, k) != f.get_default(call_default_factory=True)
            ]
            if self.shadow_bundle_url is None and changed:
                raise ValueError("the bundle_* settings need bundle_url (or shadow_bundle_url)")
            return self
        if not re.match(r"^https?://[^/@\s]+(/\S*)?$", self.bundle_url):
            raise ValueError("bundle_url must be http(s)://host[:port]/path, without credentials (use bundle_token)")
        if self.engine == "opa":
            raise ValueError(
                "bundle_url is for the embedded engine; with engine = 'opa' configure the bundle in OPA itself"
                " (services and bundles): the gateway reports the revision OPA answers with"
            )
        if self.bundle_token is not None and self.bundle_token_file is not None:
            raise ValueError("set at most one of bundle_token and bundle_token_file")
        if self.bundle_public_key is not None and self.bundle_public_key_file is not None:
            raise ValueError("set at most one of bundle_public_key and bundle_public_key_file")
        if "/" not in self.decision:
            raise ValueError("bundle_url needs a decision path with a package (e.g. gateway/decision)")
        return self


class AuditConfig(_Model):
    path: str = "var/audit.jsonl"
    fsync: bool = False
    record_arguments: bool = False
    """When true, argument values are recorded (for replay); by default only their digest and keys are."""
    max_file_bytes: Annotated[int, Field(ge=0)] = 100 * 1024 * 1024
    """Rotate the log when it would grow past this size (0: never). The new file continues the hash chain."""
    keep_files: Annotated[int, Field(ge=0)] = 0
    """Rotated files kept (the oldest beyond this are deleted); 0 keeps them all."""


class MetricsConfig(_Model):
    max_agents: Annotated[int, Field(gt=0, le=100000)] = 200
    """Agents beyond this many fold into the label value "other", so label cardinality stays bounded."""
    max_reasons: Annotated[int, Field(gt=0, le=10000)] = 100
    """Distinct deny reasons counted by name; later ones fold into "other"."""


class LoggingConfig(_Model):
    format: Literal["text", "json"] = "text"
    """``json``: one JSON object per line, with ``decision_id`` on every line about a call."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    calls: bool = True
    """One line per finished request (at info; upstream failures at warning)."""


class TracingConfig(_Model):
    exporter: Literal["none", "otlp"] = "none"
    """``otlp``: spans go to ``endpoint`` over OTLP/HTTP (protobuf); ``none``: no spans are made at all."""
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    headers: dict[str, str] = {}
    """Sent with every export; values may use ``${VAR}`` (read from the environment, never logged)."""
    service_name: str = "mcp-gateway"
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = 1.0

    def resolved_headers(self) -> dict[str, str]:
        return {k: _ENV_REF.sub(lambda m: os.environ.get(m.group(1), ""), v) for k, v in self.headers.items()}


class IntegrityConfig(_Model):
    """The tool lock (docs/integrity.md)."""

    lock: str | None = None
    """The lock file (``mcp-gateway lock`` writes it); when set, a missing or corrupt one stops the gateway's start."""
    on_drift: Literal["hide", "monitor"] = "hide"
    """``hide``: an item the lock does not approve is not served (answered as missing); ``monitor``: served, flagged."""
    watch_interval_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    """How often the lock file is checked for changes (SIGHUP reloads it too)."""


class UpstreamOAuth(_Model):
    """OAuth for an HTTP upstream that answers 401: the gateway runs the MCP authorization flow as its client."""

    client_id: str | None = None
    """A pre-registered client; without it the gateway uses client_metadata_url or dynamic registration."""
    client_secret_env: str | None = None
    """The environment variable holding the pre-registered client's secret (never the secret itself)."""
    client_metadata_url: str | None = None
    """An https URL serving this gateway's client ID metadata document (used when the server supports it)."""
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post", "none"] | None = None
    scope: str | None = None
    redirect_uri: str = "http://127.0.0.1:8976/callback"
    client_name: str = "mcp-containment-gateway"


class UpstreamConfig(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")]
    transport: Literal["stdio", "http", "builtin"]
    command: list[str] | None = None
    env: dict[str, str] = {}
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = {}
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    tool_timeouts_s: dict[str, Annotated[float, Field(gt=0, le=3600)]] = {}
    start_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    oauth: UpstreamOAuth | None = None
    """For http upstreams that need a token obtained by OAuth (instead of a static one in headers)."""
    session_mode: Literal["shared", "per_session"] = "shared"
    """``per_session``: each agent session (2025 era) gets its own upstream session, so the upstream's sampling,
    elicitation, roots and log messages can be relayed to exactly that agent; ``shared``: one for all agents."""
    containment: str | None = None
    """A profile of [containment.profiles]: the server runs as contained workers, one per agent (stdio, builtin)."""
    tools: Literal["shell", "files"] | None = None
    """For transport = "builtin": which built-in tool set."""
    max_message_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = DEFAULT_MAX_MESSAGE_BYTES
    """One message from the upstream (JSON body, SSE event, stdio line) at most; cut while reading."""
    max_server_requests: Annotated[int, Field(ge=1, le=10_000)] = 16
    """Server-to-client requests of one upstream session answered at once; the excess is refused (JSON-RPC error)."""
    max_sessions: Annotated[int, Field(ge=1, le=100_000)] = 1000
    """per_session: upstream sessions of this upstream open at once (all agents)."""
    max_sessions_per_agent: Annotated[int, Field(ge=1, le=100_000)] = 32
    """per_session: upstream sessions of this upstream one agent may hold open at once."""

    @field_validator("name")
    @classmethod
    def _no_separator(cls, v: str) -> str:
        if "__" in v:
            raise ValueError("must not contain '__' (it separates upstream and tool names)")
        return v

    @model_validator(mode="after")
    def _transport_fields(self) -> UpstreamConfig:
        if self.transport == "builtin":
            if self.tools is None or self.containment is None:
                raise ValueError("builtin upstreams need tools = 'shell' | 'files' and containment = 'PROFILE'")
            if self.command is not None or self.url is not None or self.headers:
                raise ValueError("command, url and headers are not for builtin upstreams")
            return self
        if self.tools is not None:
            raise ValueError("tools is for builtin upstreams")
        if self.oauth is not None and self.transport != "http":
            raise ValueError("oauth is for http upstreams")
        if self.containment is not None and self.transport != "stdio":
            raise ValueError("containment is for stdio and builtin upstreams")
        if self.containment is not None and self.session_mode != "shared":
            raise ValueError(
                "session_mode = 'per_session' is not available for contained upstreams (their unit is"
                " the agent's worker)"
            )
        if self.session_mode != "per_session" and {"max_sessions", "max_sessions_per_agent"} & self.model_fields_set:
            raise ValueError("max_sessions and max_sessions_per_agent are for session_mode = 'per_session'")
        if self.transport == "stdio":
            if not self.command:
                raise ValueError("stdio upstreams need command = [program, args...]")
            if self.url is not None or self.headers:
                raise ValueError("url and headers are for http upstreams")
        else:
            if not self.url or not re.match(r"^https?://", self.url):
                raise ValueError("http upstreams need url = 'http(s)://host:port/path'")
            if self.command is not None or self.env:
                raise ValueError("command and env are for stdio upstreams")
        return self

    def limits(self) -> Limits:
        return Limits(self.max_message_bytes, self.max_server_requests)

    def resolved_headers(self) -> dict[str, str]:
        """Header values with ``${VAR}`` replaced from the environment, at connect time (never logged)."""
        return {k: _ENV_REF.sub(lambda m: os.environ.get(m.group(1), ""), v) for k, v in self.headers.items()}


class Config(_Model):
    server: ServerConfig = ServerConfig()
    identity: IdentityConfig = IdentityConfig()
    policy: PolicyConfig = PolicyConfig()
    audit: AuditConfig = AuditConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    tracing: TracingConfig = TracingConfig()
    integrity: IntegrityConfig = IntegrityConfig()
    upstreams: list[UpstreamConfig] = []
    containment: ContainmentConfig | None = None
    fleet: FleetConfig | None = None
    decision_logs: DecisionLogsConfig | None = None
    limits: list[LimitConfig] = []
    secrets: SecretsConfig = SecretsConfig()
    base_dir: Path = Path(".")
    """Directory of the config file: relative paths in it are resolved against it."""
    config_file: Path | None = None
    """The file this configuration was read from (set by load_config; [identity] reloads read it again)."""

    @model_validator(mode="after")
    def _unique_upstreams(self) -> Config:
        names = [u.name for u in self.upstreams]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"upstream names must be unique: {', '.join(dupes)}")
        profiles = self.containment.profiles if self.containment is not None else {}
        for u in self.upstreams:
            if u.containment is not None and u.containment not in profiles:
                raise ValueError(
                    f"upstream {u.name!r}: containment profile {u.containment!r} is not defined"
                    " in [containment.profiles]"
                )
        return self

    @property
    def event_loop(self) -> Literal["uvloop", "asyncio"]:
        """The loop ``server.loop`` names; for "auto", uvloop when it is installed. Child processes never start
        through the loop (``connectors/process.py``), so every upstream kind runs on either."""
        if self.server.loop == "auto":
            return "uvloop" if _installed("uvloop") else "asyncio"
        return self.server.loop

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else (self.base_dir / p)


class ConfigError(Exception):
    """A configuration that cannot be used; ``errors`` holds one ``file: key: what is wrong`` line each."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def parse_config(data: dict[str, Any], source: str, base_dir: Path) -> Config:
    for internal in ("base_dir", "config_file"):
        if internal in data:
            raise ConfigError([f"{source}: {internal}: unknown key"])
    try:
        cfg = Config.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            msg = msg.removeprefix("Value error, ")
            errors.append(f"{source}: {_loc(err['loc'])}: {msg}")
        raise ConfigError(errors) from None
    errors = _check_files(cfg, source)
    if cfg.containment is not None:
        from gateway.containment.profile import config_errors

        errors += config_errors(cfg.containment, cfg.base_dir, source)
    if errors:
        raise ConfigError(errors)
    return cfg


def _check_files(cfg: Config, source: str) -> list[str]:
    errors = []
    if cfg.policy.bundle_url is not None:
        from gateway.bundles.settings import bundle_config_errors

        errors += bundle_config_errors(cfg, source)
    elif cfg.policy.engine != "opa" and not cfg.resolve(cfg.policy.path).exists():
        errors.append(f"{source}: policy.path: {cfg.resolve(cfg.policy.path)} does not exist")
    if cfg.policy.shadow_bundle_url is not None and cfg.policy.bundle_url is None:
        from gateway.bundles.settings import bundle_config_errors

        errors += bundle_config_errors(cfg, source)
    shadow = cfg.policy.shadow_path
    if shadow is not None and not cfg.resolve(shadow).exists():
        errors.append(f"{source}: policy.shadow_path: {cfg.resolve(shadow)} does not exist")
    if cfg.policy.engine == "opa" and not cfg.policy.opa_url:
        errors.append(f"{source}: policy.opa_url: required when engine = 'opa'")
    jwt = cfg.identity.jwt
    if jwt and jwt.jwks_file and not cfg.resolve(jwt.jwks_file).is_file():
        errors.append(f"{source}: identity.jwt.jwks_file: {cfg.resolve(jwt.jwks_file)} does not exist")
    elif jwt and jwt.jwks_file:
        from gateway.jwks import load_jwks  # PyJWT only when JWT identity is configured

        try:
            load_jwks(cfg.resolve(jwt.jwks_file))
        except ValueError as exc:
            errors.append(f"{source}: identity.jwt.jwks_file: {cfg.resolve(jwt.jwks_file)} {exc}")
    if jwt and jwt.hs256_secret_env and not os.environ.get(jwt.hs256_secret_env):
        errors.append(
            f"{source}: identity.jwt.hs256_secret_env: environment variable {jwt.hs256_secret_env} is not set"
        )
    elif jwt and jwt.hs256_secret_env and len(os.environ[jwt.hs256_secret_env].encode()) < 32:
        errors.append(
            f"{source}: identity.jwt.hs256_secret_env: the secret in {jwt.hs256_secret_env} is shorter "
            "than 32 bytes (HS256 needs a key of at least 256 bits, RFC 7518 section 3.2)"
        )
    fleet = cfg.fleet
    if fleet is not None and fleet.secret_file is not None:
        secret = cfg.resolve(fleet.secret_file)
        if not secret.is_file() or len(secret.read_bytes().strip()) < 32:
            errors.append(f"{source}: fleet.secret_file: {secret} must be a file of at least 32 bytes")
    names = [lim.name for lim in cfg.limits]
    if len(set(names)) != len(names):
        errors.append(f"{source}: limits: two limits have the same name")
    return errors


def load_config(path: str | Path) -> Config:
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{source}: (file): cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}: (syntax): {exc}"]) from None
    except RecursionError:  # tomllib recurses once per nesting level: a deeply nested array or table ends here
        raise ConfigError([f"{source}: (syntax): nested too deeply"]) from None
    return parse_config(data, source, path.parent.resolve()).model_copy(update={"config_file": path.resolve()})
