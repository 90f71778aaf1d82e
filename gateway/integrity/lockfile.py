"""The lock file: per upstream, each tool's, prompt's and resource template's digest and definition.

Written as sorted, indented JSON (one key per line, stable from run to run) so a re-approval is a reviewable
diff in version control. The digest is what is enforced; the definition beside it is for the reviewer, and
a file whose definition and digest disagree (edited by hand) is refused as corrupt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.integrity.definitions import KINDS, canonical, digest, item_key

VERSION = 1
ABOUT = (
    "Tool, prompt and resource-template definitions approved for the MCP gateway (docs/integrity.md). "
    "Written by `mcp-gateway lock`; re-approve a server's current definitions with `mcp-gateway lock --update SERVER`."
)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

Listing = dict[str, list[dict[str, Any]]]
"""section (``tools``, ``prompts``, ``resource_templates``) -> the items an upstream lists."""


class LockError(ValueError):
    """A lock file that cannot be used (missing, unreadable, not a lock, inconsistent); the text says which."""


@dataclass(frozen=True)
class Entry:
    digest: str
    definition: dict[str, Any]


@dataclass
class Lock:
    servers: dict[str, dict[str, dict[str, Entry]]] = field(default_factory=dict)
    """upstream -> section -> item key -> entry."""

    def entries(self, server: str, kind: str) -> dict[str, Entry]:
        return self.servers.get(server, {}).get(kind, {})

    def approve(self, server: str, listing: Listing) -> None:
        """Replace ``server``'s entries with what it lists now."""
        sections: dict[str, dict[str, Entry]] = {}
        for kind in KINDS:
            out: dict[str, Entry] = {}
            for item in listing.get(kind, []):
                key = item_key(kind, item)
                if key is not None:
                    d = canonical(kind, item)
                    out[key] = Entry(digest(d), d)
            sections[kind] = out
        self.servers[server] = sections

    def dumps(self) -> str:
        doc: dict[str, Any] = {"_about": ABOUT, "version": VERSION, "servers": {}}
        for server, sections in self.servers.items():
            doc["servers"][server] = {
                kind: {k: {"digest": e.digest, "definition": e.definition} for k, e in sections.get(kind, {}).items()}
                for kind in KINDS
            }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"

    def write(self, path: Path) -> None:
        """Atomically: a reader (the gateway's reload) never sees half a file."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.dumps(), encoding="utf-8")
        tmp.replace(path)


def loads(where: str, raw: bytes | str) -> Lock:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise LockError(f"{where}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("servers"), dict):
        raise LockError(f'{where}: not a tool lock (want an object with "version": {VERSION} and "servers")')
    lock = Lock()
    for server, sections in doc["servers"].items():
        if not isinstance(sections, dict) or set(sections) - set(KINDS):
            raise LockError(f"{where}: servers.{server}: must be an object of {', '.join(KINDS)}")
        lock.servers[server] = {}
        for kind in KINDS:
            items = sections.get(kind, {})
            if not isinstance(items, dict):
                raise LockError(f"{where}: servers.{server}.{kind}: must be an object of name -> entry")
            entries: dict[str, Entry] = {}
            for key, entry in items.items():
                at = f"{where}: servers.{server}.{kind}.{key}"
                if not isinstance(entry, dict) or not isinstance(entry.get("definition"), dict):
                    raise LockError(f"{at}: must be an object with digest and definition")
                d, definition = entry.get("digest"), entry["definition"]
                if not isinstance(d, str) or not _DIGEST.match(d):
                    raise LockError(f"{at}: digest must be sha256:<64 hex digits>")
                if digest(definition) != d or item_key(kind, definition) != key:
                    raise LockError(f"{at}: the definition does not match its digest or name (edited by hand?)")
                entries[key] = Entry(d, definition)
            lock.servers[server][kind] = entries
    return lock


def load(path: Path) -> Lock:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LockError(f"{path}: no such file (write it with `mcp-gateway lock --config ...`)") from None
    except OSError as exc:
        raise LockError(f"{path}: cannot read: {exc.strerror}") from None
    return loads(str(path), raw)
