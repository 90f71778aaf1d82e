"""``mcp-gateway policy diff``: the shadow policy's disagreements, summarised (gateway/policy/diff.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gateway.cli_common import load_or_exit


@click.command("diff")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--config", "config_path", default="gateway.toml", show_default=True, help="Gateway TOML config.")
@click.option("--examples", default=3, show_default=True, type=click.IntRange(0, 100), help="Decision ids per row.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
def policy_diff(files: tuple[Path, ...], config_path: str, examples: int, as_json: bool) -> None:
    """Summarise where the shadow policy ([policy] shadow_path) disagreed with the live one.

    Reads the audit log the config names (or FILES, each with its rotated files): per direction, team, target and
    reason, the count and example decision ids. Exits 0 (also when there is none), 2 when the log cannot be read.
    """
    from gateway.policy.diff import audit_files, report, summarise

    cfg = load_or_exit(config_path)
    paths = audit_files(files or (cfg.resolve(cfg.audit.path),))
    try:
        summary = summarise(paths, examples)
    except OSError as exc:
        click.echo(f"cannot read the audit log: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(summary.as_json(), indent=2))
    else:
        click.echo("\n".join(report(summary)))
