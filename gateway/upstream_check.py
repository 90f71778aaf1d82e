"""What ``check-config`` checks on this host about the upstreams: does each stdio program and ``cwd`` exist?

Not part of loading a config: ``serve`` starts with what it has (an upstream that cannot start is reported in
/readyz and retried), so a program installed later is picked up. ``check-config`` is the pre-flight: a config
whose upstream cannot start as written is not "ok" there, so these are errors (exit status 2).
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

from gateway.config import Config, UpstreamConfig

_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def gateway_path() -> str:
    """The gateway's PATH with its own interpreter's scripts directory first when missing: the demo upstreams
    (``mcp-server-time``...) are installed next to ``mcp-gateway`` in the set-up's virtual environment, which a
    gateway started as ``.venv/bin/mcp-gateway`` (or through a link to it) does not have on its PATH."""
    path = os.environ.get("PATH", _DEFAULT_PATH)
    scripts = sysconfig.get_path("scripts")
    if scripts and os.path.isdir(scripts) and scripts not in path.split(os.pathsep):
        path = scripts + os.pathsep + path
    return path


def _is_template(value: str) -> bool:
    """``{workspace}``, ``{agent}``: filled per agent at run time, nothing to check now."""
    return "{" in value


def _search_path(cfg: Config, up: UpstreamConfig) -> str:
    """The PATH the program is looked up in: the upstream's env, else its profile's, else the gateway's own."""
    if "PATH" in up.env:
        return up.env["PATH"]
    if up.containment is not None or up.transport == "builtin":
        profiles = cfg.containment.profiles if cfg.containment is not None else {}
        profile = profiles.get(up.containment or "")
        env = getattr(profile, "env", None) or {}
        return str(env.get("PATH", _DEFAULT_PATH))
    return gateway_path()


def _cwd(cfg: Config, up: UpstreamConfig) -> Path | None:
    if not up.cwd or _is_template(up.cwd):
        return None
    return Path(os.path.normpath(cfg.base_dir / up.cwd))


def check_upstreams(cfg: Config, source: str) -> list[str]:
    """One ``file: key: what is wrong`` line per missing program or working directory of a stdio upstream."""
    errors: list[str] = []
    for i, up in enumerate(cfg.upstreams):
        if up.transport != "stdio" or not up.command:
            continue
        where = f"{source}: upstreams[{i}]"
        cwd = _cwd(cfg, up)
        if cwd is not None and not cwd.is_dir():
            errors.append(f"{where}.cwd: upstream {up.name!r}: {cwd} is not a directory on this host")
            cwd = None
        program = up.command[0]
        if _is_template(program):
            continue
        if "/" in program:
            if os.path.isabs(program):
                path = Path(program)
            elif up.cwd:  # relative to its working directory
                if cwd is None:
                    continue  # a template, or missing (said above)
                path = cwd / program
            else:  # relative to the directory the gateway is started in
                path = Path.cwd() / program
            if not path.is_file() or not os.access(path, os.X_OK):
                what = "is not an executable file" if path.exists() else "does not exist"
                errors.append(f"{where}.command: upstream {up.name!r}: program {path} {what} on this host")
        elif shutil.which(program, path=_search_path(cfg, up)) is None:
            errors.append(f"{where}.command: upstream {up.name!r}: program {program!r} is not found on its PATH")
    return errors
