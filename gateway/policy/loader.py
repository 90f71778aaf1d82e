"""Reads a policy tree (``.rego`` modules and ``data.json`` documents) and names its revision."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.policy.decision import PolicyError


@dataclass(frozen=True)
class PolicySource:
    modules: dict[str, str]
    """Relative file name -> Rego source."""
    data: dict[str, Any]
    revision: str
    root: Path


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def load_policy_dir(root: Path) -> PolicySource:
    """Load every ``*.rego`` under ``root`` and every ``data.json``, placed at its directory's path as OPA does."""
    if not root.is_dir():
        raise PolicyError([f"{root}: not a directory"])
    modules: dict[str, str] = {}
    data: dict[str, Any] = {}
    errors: list[str] = []
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and (p.suffix == ".rego" or p.name == "data.json"))
    for path in files:
        rel = path.relative_to(root).as_posix()
        raw = path.read_bytes()
        digest.update(rel.encode() + b"\0" + raw + b"\0")
        if path.suffix == ".rego":
            try:
                modules[rel] = raw.decode("utf-8")
            except UnicodeDecodeError:
                errors.append(f"{path}: not valid UTF-8")
            continue
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            errors.append(f"{path}: invalid JSON: {exc}")
            continue
        if not isinstance(doc, dict):
            errors.append(f"{path}: a data document must be a JSON object")
            continue
        node = data
        for part in path.parent.relative_to(root).parts:
            node = node.setdefault(part, {})
        _merge(node, doc)
    if not modules and not errors:
        errors.append(f"{root}: no .rego modules found")
    if errors:
        raise PolicyError(errors)
    return PolicySource(modules, data, digest.hexdigest()[:16], root)
