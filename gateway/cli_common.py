"""What every ``mcp-gateway`` command shares: reading the config, or exiting 2 with ``file: key: what is wrong``."""

from __future__ import annotations

import sys

import click

from gateway.config import Config, ConfigError, load_config


def load_or_exit(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            click.echo(line, err=True)
        sys.exit(2)
