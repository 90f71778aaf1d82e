"""Which connector an ``[[upstreams]]`` entry gets: stdio, HTTP, contained stdio or built-in.

Its own module so the catalog (shared connections) and the per-session upstreams (one connection per agent
session) build connectors the same way without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from connectors.base import Connector
from connectors.http import HttpConnector
from connectors.stdio import StdioConnector
from gateway.config import UpstreamConfig


def make_connector(
    cfg: UpstreamConfig, base_dir: Any, on_state: Callable[[Any, bool], None], containment: Any = None
) -> Connector:
    if cfg.transport == "builtin" or cfg.containment is not None:
        if containment is None:
            raise ValueError(f"upstream {cfg.name!r} is contained but the gateway has no [containment] section")
        if cfg.transport == "builtin":
            from gateway.containment.builtin import BuiltinUpstream

            return BuiltinUpstream(cfg, containment, on_state)
        from gateway.containment.upstream import ContainedUpstream

        return ContainedUpstream(cfg, base_dir, containment, on_state)
    if cfg.transport == "stdio":
        assert cfg.command is not None
        cwd = str(base_dir / cfg.cwd) if cfg.cwd else None
        return StdioConnector(cfg.name, cfg.command, cfg.env, cwd, cfg.start_timeout_s, on_state, cfg.limits())
    assert cfg.url is not None
    auth = None
    if cfg.oauth is not None:
        from connectors.oauth import oauth_provider

        auth = oauth_provider(cfg.name, cfg.url, cfg.oauth)
    return HttpConnector(cfg.name, cfg.url, cfg.resolved_headers(), cfg.start_timeout_s, on_state, auth, cfg.limits())
