"""Live identity reload: on SIGHUP, or when the config file or the JWKS file changes, read the whole
configuration again, build the new identity table (API keys, anonymous identity, JWT verifier) and swap it in.

Like the policy reload: the candidate is validated whole first (the entire config file, as ``serve`` checks it
at start, then the table built, JWKS parsed), swapped in one assignment (``Authenticator.swap``; a request in
flight keeps the table it started with), counted (``mcp_gateway_identity_reloads_total{result}``), and a refused
candidate keeps the serving identity and is logged with every reason. Only ``[identity]`` is reloaded; other
sections that changed are named in the log and take effect at the next start. Turning ``[identity.jwt]`` on or
off is refused (the HTTP layer announces the OAuth metadata from the start): it needs a restart.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from gateway.config import Config, ConfigError, IdentityConfig, load_config
from gateway.identity import Authenticator, IdentityTable
from gateway.metrics import Metrics
from gateway.signals import reload_on_change, reload_on_sighup

log = logging.getLogger("gateway.identity")


@dataclass(frozen=True)
class IdentityReload:
    result: str
    """success, unchanged or refused (the metric's label)."""
    details: tuple[str, ...] = ()


def _stat(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _jwks_path(cfg: Config) -> Path | None:
    jwt = cfg.identity.jwt
    return cfg.resolve(jwt.jwks_file) if jwt is not None and jwt.jwks_file else None


def _digest(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


def _others(cfg: Config) -> dict[str, Any]:
    return cfg.model_dump(exclude={"identity", "config_file"})


def prepare(path: Path, serving: Config) -> tuple[Config | None, IdentityTable | None, IdentityReload | None]:
    """Read and check the candidate (in a worker thread: it reads files). Returns the config and table to swap
    in, or a refusal."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        return None, None, IdentityReload("refused", tuple(exc.errors))
    if (cfg.identity.jwt is None) != (serving.identity.jwt is None):
        return (
            None,
            None,
            IdentityReload("refused", (f"{path}: identity.jwt: turning JWT authentication on or off needs a restart",)),
        )
    try:
        table = IdentityTable.build(cfg.identity, cfg.base_dir)
    except Exception as exc:  # an unreadable JWKS, a malformed key, an unset secret: the old table keeps serving
        return (
            None,
            None,
            IdentityReload("refused", (f"{path}: identity: cannot be used: {type(exc).__name__}: {str(exc)[:200]}",)),
        )
    return cfg, table, None


class IdentityWatcher:
    """Keeps the authenticator's identity table current for the gateway's lifetime."""

    def __init__(self, auth: Authenticator, metrics: Metrics, config: Config):
        self.auth = auth
        self.metrics = metrics
        self.config = config
        self.path = config.config_file
        self._jwks_digest = _digest(_jwks_path(config))
        self._lock = anyio.Lock()
        self._seen = self._fingerprint()

    def _fingerprint(self) -> tuple[Any, ...]:
        return (_stat(self.path), _stat(_jwks_path(self.config)))

    async def reload(self, why: str) -> IdentityReload:
        """Read, check and swap in the identity of the config file on disk. One reload at a time."""
        async with self._lock:
            self._seen = self._fingerprint()
            if self.path is None:
                result = IdentityReload("refused", ("the configuration was not read from a file",))
            else:
                result = await self._reload(self.path, why)
            self.metrics.identity_reloads.labels(result.result).inc()
            return result

    async def _reload(self, path: Path, why: str) -> IdentityReload:
        cfg, table, refused = await anyio.to_thread.run_sync(prepare, path, self.config)
        if refused is not None:
            log.error(
                "identity reload (%s) refused, the serving identity stays: %s", why, "; ".join(refused.details[:50])
            )
            return refused
        assert cfg is not None and table is not None
        digest = await anyio.to_thread.run_sync(_digest, _jwks_path(cfg))
        old: IdentityConfig = self.config.identity
        if cfg.identity == old and digest == self._jwks_digest:
            log.info("identity reload (%s): unchanged", why)
            return IdentityReload("unchanged")
        changed = sorted(k for k, v in _others(cfg).items() if _others(self.config).get(k) != v)
        self.auth.swap(table)
        self.config = self.config.model_copy(update={"identity": cfg.identity})
        self._jwks_digest = digest
        self._seen = self._fingerprint()
        log.info(
            "identity reload (%s): %d API keys, %s; replaces %d API keys",
            why,
            len(cfg.identity.api_keys),
            "JWT keys re-read" if cfg.identity.jwt else "no JWT",
            len(old.api_keys),
        )
        if changed:
            log.warning(
                "identity reload (%s): the config file also changed [%s]; only [identity] is reloaded, the "
                "rest takes effect at the next start",
                why,
                ", ".join(changed),
            )
        return IdentityReload("success")

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Runs for the gateway's lifetime; reports started once SIGHUP is handled."""
        async with anyio.create_task_group() as tg:
            await tg.start(reload_on_sighup, self.reload, log, "identity")
            task_status.started()
            if self.config.identity.watch and self.path is not None:
                await reload_on_change(
                    self._fingerprint, lambda: self._seen, self.config.identity.watch_interval_s, self.reload
                )
