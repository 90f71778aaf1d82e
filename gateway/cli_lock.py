"""``mcp-gateway lock``: write, check and re-approve the tool lock (docs/integrity.md).

Exit codes: 0 done (``--check``: no drift), 1 drift (``--check``), 2 could not do it (a config or lock that cannot
be read, an upstream that cannot be listed, a lock that exists already). Nothing is written unless every upstream
it needs was listed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import click

from gateway.cli_common import load_or_exit
from gateway.config import Config
from gateway.integrity.definitions import KINDS
from gateway.integrity.drift import compare_all
from gateway.integrity.lockfile import Listing, Lock, LockError, load
from gateway.integrity.snapshot import list_upstreams

DEFAULT_LOCK = "mcp-tools.lock"


def lock_path(cfg: Config, given: str | None) -> Path:
    """``--lock``, else ``[integrity] lock``, else mcp-tools.lock beside the config."""
    if given is not None:
        return Path(given)
    return cfg.resolve(cfg.integrity.lock or DEFAULT_LOCK)


def lock_errors(cfg: Config, config_path: str) -> list[str]:
    """check-config's word on ``[integrity] lock``: the file the gateway would refuse to start with."""
    if not cfg.integrity.lock:
        return []
    try:
        load(cfg.resolve(cfg.integrity.lock))
    except LockError as exc:
        return [f"{config_path}: integrity.lock: {exc}"]
    return []


def _fail(lines: list[str]) -> None:
    for line in lines:
        click.echo(line, err=True)
    sys.exit(2)


def _list(cfg: Config, names: list[str], timeout: float) -> dict[str, Listing]:
    listings, errors = anyio.run(list_upstreams, cfg, names, timeout)
    if errors:
        _fail([f"upstream {name}: {why}" for name, why in sorted(errors.items())] + ["nothing written"])
    return listings


def _summary(listing: Listing) -> str:
    return ", ".join(f"{len(listing.get(k, []))} {k.replace('_', ' ')}" for k in KINDS)


@click.command("lock")
@click.option("--config", "config_path", default="gateway.toml", show_default=True, help="Gateway TOML config.")
@click.option(
    "--lock", "lock_file", default=None, help="The lock file (default: [integrity] lock, else mcp-tools.lock)."
)
@click.option("--check", is_flag=True, help="Compare what the upstreams list with the lock; exit 1 on drift.")
@click.option(
    "--update", "update", multiple=True, metavar="SERVER", help="Re-approve SERVER's current definitions (repeatable)."
)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the upstreams to start and list.")
def lock(config_path: str, lock_file: str | None, check: bool, update: tuple[str, ...], timeout: float) -> None:
    """Write the tool lock: every upstream's tools, prompts and resource templates, each with its digest.

    With no option, writes a new lock (refused when one exists: re-approve a server with --update SERVER, so
    each server's change is reviewed; to start over, delete the file). --check exits 1 when an upstream lists
    anything the lock does not approve, or no longer lists something it does, printing the diff.
    """
    if check and update:
        _fail(["--check and --update do not go together"])
    cfg = load_or_exit(config_path)
    path = lock_path(cfg, lock_file)
    configured = [u.name for u in cfg.upstreams]
    if not check and not update:
        if path.exists():
            _fail(
                [
                    f"{path}: exists; review drift with `lock --check`, re-approve a server with `lock --update "
                    "SERVER`, or delete the file to lock everything anew"
                ]
            )
        listings = _list(cfg, configured, timeout)
        new = Lock()
        for name in sorted(listings):
            new.approve(name, listings[name])
            click.echo(f"{name}: {_summary(listings[name])}")
        new.write(path)
        click.echo(f"wrote {path}")
        return
    try:
        current = load(path)
    except LockError as exc:
        _fail([str(exc)])
    if update:
        unknown = sorted(set(update) - set(configured))
        if unknown:
            _fail([f"--update {name}: no such upstream in {config_path}" for name in unknown])
        listings = _list(cfg, list(dict.fromkeys(update)), timeout)
        for drift in compare_all(current, listings):
            click.echo(f"approving: {drift.text()}")
        for name in sorted(listings):
            current.approve(name, listings[name])
            click.echo(f"{name}: {_summary(listings[name])}")
        current.write(path)
        click.echo(f"wrote {path}")
        return
    listings = _list(cfg, configured, timeout)
    drifts = compare_all(current, listings)
    for drift in drifts:
        click.echo(drift.text())
    if drifts:
        servers = sorted({d.server for d in drifts})
        click.echo(
            f"{len(drifts)} items drifted from {path}; re-approve with: " + " ".join(f"--update {s}" for s in servers),
            err=True,
        )
        sys.exit(1)
    click.echo(f"{path}: {len(listings)} upstreams match the lock")
