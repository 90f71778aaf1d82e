"""The ``mcp-gateway`` command: serve, check a config, hash a key, verify the audit chain."""

from __future__ import annotations

import hashlib
import logging
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from gateway.cli_common import load_or_exit as _load
from gateway.config import Config
from gateway.policy import PolicyError
from gateway.upstream_check import check_upstreams


def _check_policy(cfg: Config) -> list[str]:
    if cfg.policy.engine == "opa":
        return []
    from gateway.policy.engines import compile_policy

    try:
        compile_policy(cfg.resolve(cfg.policy.path), cfg.policy.decision, cfg.policy.engine)
    except PolicyError as exc:
        return exc.errors
    return []


class _LazyGroup(click.Group):
    """A group whose subcommands kept in other modules are imported when named: ``serve`` never loads the policy,
    audit and lock tooling (~1.3 MB RSS for the serving gateway's whole life)."""

    def __init__(self, *args: Any, lazy: dict[str, Callable[[], click.Command]] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        load = self.lazy.pop(cmd_name, None)
        if load is not None:
            self.add_command(load(), cmd_name)
        return super().get_command(ctx, cmd_name)


def _policy_group() -> click.Command:
    from gateway.cli_diff import policy_diff
    from gateway.cli_policy import policy

    policy.add_command(policy_diff)
    return policy


def _lock() -> click.Command:
    from gateway.cli_lock import lock

    return lock  # mcp-gateway lock: the tool lock (gateway/cli_lock.py)


def _audit_replay() -> click.Command:
    from gateway.cli_policy import audit_replay

    return audit_replay


def _audit_explain() -> click.Command:
    from gateway.cli_policy import audit_explain

    return audit_explain


@click.group(cls=_LazyGroup, lazy={"policy": _policy_group, "lock": _lock})
@click.version_option(package_name="mcp-containment-gateway")
def main() -> None:
    """MCP containment gateway: every agent tool call authenticated, decided by Rego, contained and audited."""


@main.command()
@click.option("--config", "config_path", default="gateway.toml", show_default=True, help="Gateway TOML config.")
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Overrides [logging] level.",
)
def serve(config_path: str, log_level: str | None) -> None:
    """Run the gateway."""
    # The gateway serves on asyncio only. httpcore2 (under httpx2, which the MCP SDK's server package imports)
    # imports trio whenever it is installed, for its locks under a trio loop: trio and attrs cost the process
    # ~2.7 MB RSS for as long as it lives. A None entry makes ``import trio`` fail as if it were not installed
    # (the import system's documented behaviour), so httpcore2 uses its anyio locks, as it does on asyncio anyway.
    sys.modules.setdefault("trio", None)  # type: ignore[arg-type]
    from gateway.memory import share_one_arena

    share_one_arena()  # before the first thread starts
    logging.basicConfig(level=(log_level or "info").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = _load(config_path)
    from gateway import logs, tracing
    from gateway.service import Gateway

    logs.setup(cfg.logging, log_level)
    log_level = log_level or cfg.logging.level
    try:
        gw = Gateway(cfg)
    except PolicyError as exc:
        for line in exc.errors:
            click.echo(f"policy: {line}", err=True)
        sys.exit(2)
    except (OSError, ValueError) as exc:
        click.echo(f"{config_path}: cannot start: {exc}", err=True)
        sys.exit(2)
    from gateway.http.admin import build_admin_app
    from gateway.http.app import build_agent_app
    from gateway.http.server import bind
    from gateway.http.server import serve as serve_http

    server = cfg.server
    try:
        agent_sock = bind(server.host, server.port)
        admin_sock = bind(server.admin_host, server.admin_port)
    except OSError as exc:
        click.echo(f"{config_path}: cannot listen: {exc}", err=True)
        sys.exit(2)
    logging.getLogger("gateway").info(
        "agents connect to http://%s/mcp; metrics and readiness at http://%s/", server.listen, server.admin_listen
    )
    serve_http(
        build_agent_app(gw),
        build_admin_app(gw),
        server,
        "warning" if log_level != "debug" else "debug",
        agent_sock,
        admin_sock,
        lambda limit: gw.metrics.limited.labels(limit).inc(),
        lambda: gw.failure is not None,
        loop=cfg.event_loop,
    )
    tracing.shutdown()
    if gw.failure is not None:
        logging.getLogger("gateway").critical("exiting: %s", gw.failure)
        sys.exit(1)


@main.command("check-config")
@click.argument("config_path", default="gateway.toml")
@click.option("--config", "config_opt", default=None, help="The config file (as for every other command).")
def check_config(config_path: str, config_opt: str | None) -> None:
    """Validate a config (and compile its policy); print every error as file: key: what is wrong."""
    config_path = config_opt or config_path
    cfg = _load(config_path)
    errors = [f"{config_path}: policy.path: {e}" for e in _check_policy(cfg)]
    errors += check_upstreams(cfg, config_path)  # programs and working directories on this host
    from gateway.cli_lock import lock_errors

    errors += lock_errors(cfg, config_path)  # [integrity] lock: present and consistent
    for line in errors:
        click.echo(line, err=True)
    if errors:
        sys.exit(2)
    click.echo(f"{config_path}: ok ({len(cfg.upstreams)} upstreams, {len(cfg.identity.api_keys)} api keys)")


@main.command("hash-key")
@click.argument("key", required=False)
def hash_key(key: str | None) -> None:
    """Print the sha256 to put in [[identity.api_keys]]; with no KEY, make a new random key."""
    if key is None:
        key = "mcpgw_" + secrets.token_urlsafe(32)
        click.echo(f"key:    {key}")
    click.echo(f"sha256: {hashlib.sha256(key.encode()).hexdigest()}")


@main.group(cls=_LazyGroup, lazy={"replay": _audit_replay, "explain": _audit_explain})
def audit() -> None:
    """Audit log tools."""


@audit.command("verify")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--as-given", is_flag=True, help="Check FILES in the order given (default: rotated sets in chain order).")
@click.option("--genesis", is_flag=True, help="The first file must begin the chain (catches deleted oldest records).")
@click.option(
    "--head",
    "head",
    default=None,
    metavar="SHA256",
    help="The hash the last record must have (an anchor kept elsewhere: catches a cut-off tail).",
)
def audit_verify(files: tuple[Path, ...], as_given: bool, genesis: bool, head: str | None) -> None:
    """Check the hash chain across FILES; report the first broken link.

    A FILE may be an active log (its rotated files <FILE>.NNNNNN are added) or one file of a set;
    rotated files are put in chain order (oldest first, the active file last) unless --as-given.
    """
    from gateway.audit import GENESIS, audit_set, chain_order, verify_chain

    paths: list[Path] = []
    for f in files:
        if not f.exists() and (as_given or not audit_set(f)):
            # An active file may be missing (a crash right after a rotation); its rotated files are enough.
            click.echo(f"{f}: no such file", err=True)
            sys.exit(2)
        if f.is_dir():
            click.echo(
                f"{f}: is a directory; give the audit log file (its rotated files are found beside it)", err=True
            )
            sys.exit(2)
        for p in audit_set(f) if not as_given else [f]:
            if p not in paths:
                paths.append(p)
    if not as_given:
        paths = chain_order(paths)
    result = verify_chain(paths, start=GENESIS if genesis else None, head=head)
    click.echo(result.message)
    if not result.ok:
        sys.exit(1)
