"""Import a Microsoft MXC sandbox policy (schema 0.8) as a containment profile.

MXC describes one sandboxed execution: filesystem paths, network egress rules, process env and timeout.
What maps onto our profile is mapped; everything that cannot be enforced on Linux by this gateway (UI and
clipboard isolation, Windows- and macOS-specific sections, CIDR egress rules, ingress) is returned as a list of
``unsupported`` notes so the operator sees it in the start-up log and ``/readyz`` instead of losing it silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.containment.settings import check_env, check_host, check_path

_TOP = {
    "$schema",
    "_comment",
    "containerId",
    "containment",
    "fallback",
    "filesystem",
    "lifecycle",
    "lxc",
    "network",
    "process",
    "processContainer",
    "runtimeConfig",
    "seatbelt",
    "ui",
    "version",
}
_TIERS = {"process": "sandbox", "bubblewrap": "sandbox", "lxc": "sandbox"}


class MxcError(ValueError):
    pass


@dataclass
class MxcProfile:
    values: dict[str, Any]
    """ProfileConfig field values the policy provides."""
    unsupported: list[str] = field(default_factory=list)


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MxcError(f"{where} must be a list of strings")
    return list(value)


def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MxcError(f"{where} must be an object")
    return value


def _set(value: Any) -> bool:
    """MXC fields are nullable: null, an empty list or an empty object means 'not asked for'."""
    return value not in (None, [], {}, False)


def load_mxc(path: Path) -> MxcProfile:
    try:
        doc = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise MxcError(f"cannot read {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MxcError(f"{path} is not JSON: {exc}") from None
    return convert(doc)


def convert(doc: Any) -> MxcProfile:
    if not isinstance(doc, dict):
        raise MxcError("an MXC policy is a JSON object")
    unknown = sorted(set(doc) - _TOP)
    if unknown:
        raise MxcError(f"unknown MXC field(s): {', '.join(unknown)}")
    if "process" not in doc:
        raise MxcError("an MXC policy requires 'process'")
    values: dict[str, Any] = {}
    notes: list[str] = []

    containment = doc.get("containment")
    if containment is not None:
        if containment not in _TIERS:
            notes.append(f"containment {containment!r} is not a Linux backend; the gateway's sandbox tier is used")
        values["tier"] = _TIERS.get(containment, "sandbox")
        if containment == "lxc":
            notes.append("containment 'lxc' runs as the gateway's bubblewrap sandbox, not a full container")

    fs = _obj(doc.get("filesystem"), "filesystem")
    for key, ours in (("readwritePaths", "read_write"), ("readonlyPaths", "read_only"), ("deniedPaths", "deny")):
        paths = _strings(fs.get(key), f"filesystem.{key}")
        try:
            values[ours] = [check_path(p) for p in paths]
        except ValueError as exc:
            raise MxcError(f"filesystem.{key}: {exc}") from None

    proc = _obj(doc.get("process"), "process")
    env: dict[str, str] = {}
    for item in _strings(proc.get("env"), "process.env"):
        name, sep, val = item.partition("=")
        if not sep or not name:
            raise MxcError(f"process.env entry {item!r} is not KEY=VALUE")
        env[name] = val
    try:
        values["env"] = check_env(env)
    except ValueError as exc:
        raise MxcError(f"process.env: {exc}") from None
    timeout = proc.get("timeout")
    if timeout is not None:
        if not isinstance(timeout, int) or timeout < 0:
            raise MxcError("process.timeout must be milliseconds (a non-negative integer)")
        if timeout > 0:
            values["timeout_s"] = timeout / 1000.0
    for key in ("commandLine", "cwd"):
        if proc.get(key) is not None:
            notes.append(f"process.{key} is ignored: the upstream's command and the agent's workspace are used")

    net = _obj(doc.get("network"), "network")
    values.update(_network(net, notes))

    for section in ("ui", "processContainer", "seatbelt", "fallback", "lxc"):
        if _set(doc.get(section)):
            detail = "UI and clipboard isolation" if section == "ui" else "a platform-specific section"
            notes.append(f"{section}: {detail} cannot be enforced on Linux by this gateway")
    lifecycle = _obj(doc.get("lifecycle"), "lifecycle")
    if lifecycle.get("preservePolicy"):
        notes.append("lifecycle.preservePolicy is ignored: workers are destroyed with their sandbox")
    runtime = _obj(doc.get("runtimeConfig"), "runtimeConfig")
    if runtime.get("networkProxy"):
        notes.append("runtimeConfig.networkProxy is ignored: egress goes through the gateway's own proxy")
    return MxcProfile(values, notes)


def _network(net: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """MXC egress -> network mode and allow_hosts. Deny by default, as MXC itself."""
    egress = _obj(net.get("egress"), "network.egress")
    allowed = _strings(net.get("allowedHosts"), "network.allowedHosts")
    blocked = _strings(net.get("blockedHosts"), "network.blockedHosts")
    default = egress.get("default") or ("allow" if net.get("defaultPolicy") == "allow" else "deny")
    allow_rules = egress.get("allow") or []
    deny_rules = egress.get("deny") or []
    if allow_rules or deny_rules:
        notes.append("network.egress allow/deny CIDR rules are not enforced; use allowedHosts with host:port entries")
    if _set(net.get("ingress")) or net.get("allowLocalNetwork"):
        notes.append("network.ingress / allowLocalNetwork: workers accept no inbound connections")
    for key in ("proxy", "enforcementMode"):
        if _set(net.get(key)):
            notes.append(f"network.{key} is ignored: egress goes through the gateway's own allow-list proxy")
    if default == "allow":
        if blocked:
            notes.append("network.blockedHosts with a default of 'allow' cannot be enforced; network stays 'none'")
            return {"network": "none", "allow_hosts": []}
        return {"network": "host", "allow_hosts": []}
    if not allowed:
        return {"network": "none", "allow_hosts": []}
    hosts = []
    for h in allowed:
        entry = h if ":" in h.strip("[]") or h.startswith("[") else f"{h}:443"
        if ":" not in h:
            notes.append(f"network.allowedHosts {h!r} has no port; only port 443 is allowed")
        try:
            hosts.append(check_host(entry))
        except ValueError as exc:
            raise MxcError(f"network.allowedHosts: {exc}") from None
    hosts = [h for h in hosts if h.rpartition(":")[0] not in {b.lower() for b in blocked}]
    return {"network": "allowlist" if hosts else "none", "allow_hosts": hosts}
