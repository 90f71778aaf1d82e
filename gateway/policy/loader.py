"""Reads a policy (a directory tree, or an OPA bundle ``.tar.gz``) into modules, data and table tests, and names
its revision.

A directory's revision is a digest of its ``.rego`` and data files; a bundle's is the ``revision`` of its
``.manifest``, the name the bundle server and ``opa build --revision`` gave it.
"""

from __future__ import annotations

import hashlib
import posixpath
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.policy.decision import PolicyError

DATA_FILES = ("data.json", "data.yaml", "data.yml")
TEST_SUFFIXES = ("_test.yaml", "_test.yml", "_test.json")
REGO_TEST_SUFFIX = "_test.rego"
"""Rego test modules (``test_`` rules, run by ``policy test``): never part of the policy the gateway decides with."""
_MAX_MEMBER = 32 << 20
_MAX_BUNDLE = 128 << 20


@dataclass(frozen=True)
class PolicySource:
    modules: dict[str, str]
    """Relative file name -> Rego source."""
    data: dict[str, Any]
    revision: str
    root: Path
    tests: dict[str, str] = field(default_factory=dict)
    """Relative file name -> table-test document (YAML or JSON text), run before a reload goes live."""
    kind: str = "dir"
    """"dir" or "bundle"."""
    catalogue: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """The cached tool catalogue (``catalogue.json`` at the root): the annotations the table tests decide on."""
    rego_tests: dict[str, str] = field(default_factory=dict)
    """Relative file name -> Rego test module (``*_test.rego``), not in ``modules`` nor in the revision."""

    def where(self, name: str, offset: int | None = None) -> str:
        """How an error message names one of this policy's files, and the line and column of an offset into a
        module's source."""
        place = f"{self.root}/{name}" if self.kind == "dir" else f"{self.root}:{name}"
        if offset is None:
            return place
        src = self.modules[name] if name in self.modules else self.rego_tests[name]
        line = src.count("\n", 0, offset) + 1
        col = offset - src.rfind("\n", 0, offset)
        return f"{place}:{line}:{col}"


def _merge(dst: dict[str, Any], src: dict[str, Any], at: str = "") -> list[str]:
    """Merge ``src`` into ``dst``; the keys two documents both set to different values (which one would win
    depends on the order the files are read in, so it is an error, as in OPA)."""
    clashes = []
    for k, v in src.items():
        if k not in dst:
            dst[k] = v
        elif isinstance(v, dict) and isinstance(dst[k], dict):
            clashes += _merge(dst[k], v, f"{at}{k}.")
        elif dst[k] != v:
            clashes.append(f"{at}{k}")
    return clashes


CATALOGUE_FILE = "catalogue.json"
"""The cached tool catalogue (gateway/policy/catalogue.py): read with the tables, not part of the revision."""


def is_policy_file(name: str) -> bool:
    base = posixpath.basename(name)
    return name.endswith(".rego") or base in DATA_FILES or base.endswith(TEST_SUFFIXES) or name == CATALOGUE_FILE


def parse_document(name: str, raw: bytes | str) -> Any:
    """A data or table document: JSON when the name says so, else YAML."""
    if name.endswith(".json"):
        return orjson.loads(raw)
    import yaml

    return yaml.safe_load(raw)


class _Collector:
    """Sorts files of either layout into modules, data and tests; collects every error before raising."""

    def __init__(self, where: Any):
        self.modules: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self.tests: dict[str, str] = {}
        self.rego_tests: dict[str, str] = {}
        self.catalogue: dict[str, dict[str, dict[str, Any]]] = {}
        self.errors: list[str] = []
        self.digest = hashlib.sha256()
        self._where = where

    def add(self, rel: str, raw: bytes) -> None:
        base = posixpath.basename(rel)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.errors.append(f"{self._where(rel)}: not valid UTF-8")
            return
        if base.endswith(TEST_SUFFIXES):
            self.tests[rel] = text
            return
        if base.endswith(REGO_TEST_SUFFIX):
            self.rego_tests[rel] = text
            return
        if rel == CATALOGUE_FILE:
            from gateway.policy.catalogue import parse_catalogue

            try:
                self.catalogue = parse_catalogue(self._where(rel), text)
            except ValueError as exc:
                self.errors.append(str(exc))
            return
        self.digest.update(rel.encode() + b"\0" + raw + b"\0")
        if rel.endswith(".rego"):
            self.modules[rel] = text
            return
        try:
            doc = parse_document(rel, raw)
        except Exception as exc:
            self.errors.append(f"{self._where(rel)}: invalid data document: {exc}")
            return
        if not isinstance(doc, dict):
            self.errors.append(f"{self._where(rel)}: a data document must be an object")
            return
        for part in reversed([p for p in posixpath.dirname(rel).split("/") if p]):
            doc = {part: doc}
        clashes = _merge(self.data, doc)
        if clashes:
            self.errors.append(
                f"{self._where(rel)}: sets {', '.join(clashes)} to another value than a data document read before it"
            )

    def finish(self, root: Path, revision: str | None, kind: str, empty: str) -> PolicySource:
        if not self.modules and not self.errors:
            self.errors.append(empty)
        if self.errors:
            raise PolicyError(self.errors)
        rev = revision or self.digest.hexdigest()[:16]
        return PolicySource(self.modules, self.data, rev, root, self.tests, kind, self.catalogue, self.rego_tests)


def load_policy_dir(root: Path) -> PolicySource:
    """Load every ``*.rego`` under ``root`` and every data file, placed at its directory's path as OPA does."""
    if not root.is_dir():
        raise PolicyError([f"{root}: not a directory"])
    c = _Collector(lambda rel: str(root / rel))
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if is_policy_file(rel):
            c.add(rel, path.read_bytes())
    return c.finish(root, None, "dir", f"{root}: no .rego modules found")


def load_bundle(path: Path) -> PolicySource:
    """Load an OPA bundle (``opa build`` output): read in memory, never extracted, members and size capped."""
    c = _Collector(lambda rel: f"{path}:{rel}")
    manifest: dict[str, Any] = {}
    total = 0
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                rel = posixpath.normpath("/" + member.name).lstrip("/")
                total += member.size
                if member.size > _MAX_MEMBER or total > _MAX_BUNDLE:
                    raise PolicyError([f"{path}:{rel}: bundle too large (members up to 32 MiB, 128 MiB in all)"])
                if rel != ".manifest" and not is_policy_file(rel):
                    continue
                f = tar.extractfile(member)
                raw = f.read() if f is not None else b""
                if rel == ".manifest":
                    try:
                        manifest = orjson.loads(raw)
                    except orjson.JSONDecodeError as exc:
                        raise PolicyError([f"{path}:.manifest: invalid JSON: {exc}"]) from None
                    if not isinstance(manifest, dict):
                        raise PolicyError([f"{path}:.manifest: must be a JSON object"])
                else:
                    c.add(rel, raw)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PolicyError([f"{path}: not a readable OPA bundle (.tar.gz): {exc}"]) from None
    if manifest.get("rego_version", 1) == 0:
        c.errors.append(f"{path}:.manifest: rego_version 0 bundles are not supported; rebuild with Rego v1")
    revision = manifest.get("revision")
    if revision is not None and not isinstance(revision, str):
        c.errors.append(f"{path}:.manifest: revision must be a string")
        revision = None
    return c.finish(path, revision or None, "bundle", f"{path}: the bundle holds no .rego modules")


def is_bundle(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


def load_policy(path: Path) -> PolicySource:
    """A policy directory or an OPA bundle file, whichever ``path`` is."""
    if path.is_dir():
        return load_policy_dir(path)
    if is_bundle(path) and path.is_file():
        return load_bundle(path)
    if not path.exists():
        raise PolicyError([f"{path}: does not exist"])
    raise PolicyError([f"{path}: neither a policy directory nor an OPA bundle (.tar.gz)"])
