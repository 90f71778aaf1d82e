"""The tools' annotations the gateway puts in a decision's input, for the tools that decide offline.

The gateway decides a tool call on the annotations the tool's upstream declared (``input.annotations``): a rule
on ``destructiveHint`` sees what the upstream said. ``policy eval`` and the table tests must decide on that same
input, or they pass what the gateway denies. The annotations come from, in this order:

- built-in upstreams (``transport = "builtin"``): their tool sets' own declarations;
- stdio and HTTP upstreams: their ``tools/list``, asked live (``policy eval``, ``policy catalogue``);
- the policy's ``catalogue.json``: a cached catalogue, ``{"<upstream>": {"<tool>": {annotations}}}``, written by
  ``mcp-gateway policy catalogue``, so the tables decide offline (and in a reload's check) on what the upstreams
  declare.
"""

from __future__ import annotations

from typing import Any

import anyio
import orjson

from gateway.config import Config, UpstreamConfig

Catalogue = dict[str, dict[str, dict[str, Any]]]
"""upstream -> tool (the upstream's own name) -> its annotations."""


def _toolsets() -> dict[str, Any]:
    """The built-in tool sets, wherever the containment package keeps them."""
    import importlib

    for name in ("gateway.containment.builtin", "connectors.builtin"):
        try:
            return dict(importlib.import_module(name).TOOLSETS)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError("the built-in tool sets (gateway.containment.builtin)")


def builtin_tools(up: UpstreamConfig) -> list[dict[str, Any]]:
    """A built-in upstream's tool definitions, as it declares them to the gateway (no worker is started)."""
    cls = _toolsets()[str(up.tools)]
    return cls.tools(object.__new__(cls))  # the declarations are static: no runtime is needed to read them


def annotations_of(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """tool name -> annotations, as the gateway passes them to the policy (``{}`` when a tool declares none)."""
    out: dict[str, dict[str, Any]] = {}
    for t in tools:
        if isinstance(t, dict) and isinstance(t.get("name"), str):
            ann = t.get("annotations")
            out[t["name"]] = ann if isinstance(ann, dict) else {}
    return out


def builtin_catalogue(cfg: Config) -> Catalogue:
    """The catalogue of the config's built-in upstreams."""
    return {up.name: annotations_of(builtin_tools(up)) for up in cfg.upstreams if up.transport == "builtin"}


async def list_tools(cfg: Config, up: UpstreamConfig, timeout: float) -> list[dict[str, Any]]:
    """Start an uncontained stdio or HTTP upstream as the gateway would, list its tools, stop it.

    Contained stdio upstreams run only in the gateway's sandboxes: they are not started here (ValueError)."""
    from gateway.connect import make_connector

    if up.transport == "builtin":
        return builtin_tools(up)
    if up.containment is not None:
        raise ValueError(f"upstream {up.name} is contained: it is only started inside the gateway's sandboxes")
    conn = make_connector(up, cfg.base_dir, lambda _c, _up: None)
    tools: list[dict[str, Any]] = []
    try:
        async with anyio.create_task_group() as tg:
            await conn.start(tg)
            try:
                if not await conn.wait_ready(min(timeout, up.start_timeout_s)):
                    raise ValueError(f"upstream {up.name} did not start: {conn.last_error or 'no answer'}")
                cursor = None
                for _ in range(100):
                    result = await conn.request("tools/list", {"cursor": cursor} if cursor else {}, timeout)
                    tools.extend(t for t in result.get("tools", []) if isinstance(t, dict))
                    cursor = result.get("nextCursor")
                    if not cursor:
                        break
            finally:
                await conn.aclose()
                tg.cancel_scope.cancel()
    except ValueError:
        raise
    except Exception as exc:  # an upstream that cannot be listed: the caller says so and falls back
        raise ValueError(f"upstream {up.name}: cannot list its tools: {exc}") from None
    return tools


def parse_catalogue(where: str, raw: bytes | str) -> Catalogue:
    """A catalogue document; ValueError naming what is wrong."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{where}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: must be an object of upstream -> tool -> annotations")
    out: Catalogue = {}
    for server, tools in doc.items():
        if server.startswith("_"):  # "_about": a note for the reader
            continue
        if not isinstance(tools, dict) or not all(isinstance(a, dict) for a in tools.values()):
            raise ValueError(f"{where}: {server}: must be an object of tool -> annotations (an object)")
        out[server] = {str(k): v for k, v in tools.items()}
    return out


def merged(*catalogues: Catalogue) -> Catalogue:
    """Later catalogues win, upstream by upstream (a configured upstream replaces the cached one whole)."""
    out: Catalogue = {}
    for c in catalogues:
        out.update(c)
    return out
