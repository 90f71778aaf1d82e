"""What each upstream lists, fetched the way the gateway fetches it: its own catalog start-up (connectors,
containment for built-in and contained upstreams, pagination), for ``mcp-gateway lock``."""

from __future__ import annotations

from typing import Any

import anyio

from gateway.config import Config
from gateway.integrity.definitions import CATALOG_KIND, KINDS
from gateway.integrity.lockfile import Listing


async def list_upstreams(cfg: Config, names: list[str], timeout: float) -> tuple[dict[str, Listing], dict[str, str]]:
    """(server -> its lists, server -> why it could not be listed) for the upstreams named."""
    from gateway.catalog import Catalog
    from gateway.metrics import Metrics

    ups = [u for u in cfg.upstreams if u.name in names]
    containment: Any = None
    if cfg.containment is not None and any(u.transport == "builtin" or u.containment for u in ups):
        from gateway.containment.runtime import Containment

        containment = Containment(cfg.containment, cfg.base_dir, Metrics())
    catalog = Catalog(ups, cfg.base_dir, lambda _name, _up: None, containment)
    listings: dict[str, Listing] = {}
    errors: dict[str, str] = {}
    try:
        async with anyio.create_task_group() as tg:
            try:
                await catalog.open_listed(tg, timeout)
                for up in catalog.upstreams.values():
                    failed = {k: e for k, e in up.list_errors.items() if k in CATALOG_KIND.values()}
                    if not up.conn.up or up.generation == 0:
                        errors[up.name] = f"not listed: {up.conn.last_error or 'it did not start in time'}"
                    elif failed:
                        errors[up.name] = "; ".join(f"cannot list {k}: {e}" for k, e in sorted(failed.items()))
                    else:
                        lists = {"tools": up.tools, "prompts": up.prompts}
                        listings[up.name] = {
                            k: list(lists[k].values()) if k in lists else list(up.templates) for k in KINDS
                        }
            finally:
                await catalog.aclose()
                tg.cancel_scope.cancel()
    finally:
        if containment is not None:
            await containment.aclose()
    return listings, errors
