"""Reads the audit log behind its writer, across rotations, and remembers durably where shipping stopped.

A file of the log is named by the ``prev`` of its first line: the hash the chain enters it with, which rotation
(a rename) does not change and no other file shares. The cursor is that name, a byte offset in the file, and the
hash of the last shipped line; it is written to a temporary file, fsynced and renamed over the old one, so a crash
leaves either the old cursor or the new one (at least once: a batch shipped but not yet marked goes again).
A line not yet ended by a newline is not read (the writer may be in the middle of it).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from gateway.audit import audit_set

log = logging.getLogger("gateway.decisionlogs")


@dataclass
class Position:
    file: str | None
    """The ``prev`` of the file's first line; None for a log not written yet (then: its first file)."""
    offset: int = 0
    last: str | None = None
    """The hash of the last line shipped (the ``prev`` of the next record)."""


def _first_prev(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            line = f.readline()
    except OSError:
        return None
    if not line.endswith(b"\n"):
        return None
    try:
        prev = orjson.loads(line).get("prev")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return prev if isinstance(prev, str) else None


def _fits(path: Path, offset: int, last: str | None) -> bool:
    """Whether the line that ends at ``offset`` in ``path`` is the one whose hash the cursor holds."""
    if offset == 0:
        return True
    try:
        with path.open("rb") as f:
            start = max(0, offset - (64 << 20))
            f.seek(start)
            block = f.read(offset - start)
    except OSError:
        return False
    if len(block) != offset - start or not block.endswith(b"\n"):
        return False
    line = block[:-1].rsplit(b"\n", 1)[-1]
    return last is None or hashlib.sha256(line).hexdigest() == last


@dataclass(frozen=True)
class Line:
    record: dict[str, object] | None
    """None for a line that is not a JSON object (a torn record a crash left behind): skipped, logged."""
    hash: str
    end: int
    """The offset just past this line: where the cursor goes once it is shipped."""


class LogReader:
    def __init__(self, audit_path: Path, cursor_path: Path):
        self.audit_path = audit_path
        self.cursor_path = cursor_path
        self.pos = self._load()
        self.lost = 0
        self._checked = False
        """Files pruned (``keep_files``) before they were shipped: their records never reach the sink."""

    def _load(self) -> Position:
        try:
            doc = orjson.loads(self.cursor_path.read_bytes())
            return Position(doc.get("file"), int(doc.get("offset", 0)), doc.get("last"))
        except FileNotFoundError:
            return Position(None)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            # A cursor that cannot be read ships everything again rather than skip anything (at least once).
            log.error(
                "decision logs: cursor %s unreadable (%s): shipping the audit log from its start", self.cursor_path, exc
            )
            return Position(None)

    def save(self, pos: Position) -> None:
        """Make ``pos`` durable (temporary file, fsync, rename, fsync of the directory)."""
        tmp = self.cursor_path.with_name(self.cursor_path.name + ".tmp")
        data = orjson.dumps({"file": pos.file, "offset": pos.offset, "last": pos.last})
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.cursor_path)
        dfd = os.open(self.cursor_path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.pos = pos

    def _files(self) -> list[tuple[str | None, Path]]:
        return [(_first_prev(p), p) for p in audit_set(self.audit_path)]

    def read(self, max_lines: int, max_bytes: int) -> tuple[list[Line], Position]:
        """Up to ``max_lines`` complete lines after the cursor (moving on to newer files at the end of one), and the
        position after them. Nothing is marked shipped until ``save`` is called with that position."""
        files = self._files()
        if not files:
            return [], self.pos
        pos = Position(self.pos.file, self.pos.offset, self.pos.last)
        names = [name for name, _ in files]
        if pos.file is None:
            idx = 0
            pos.offset = 0
        elif pos.file in names:
            idx = names.index(pos.file)
            if not self._checked and not _fits(files[idx][1], pos.offset, pos.last):
                # not the file the cursor was written for (a log deleted and begun again from the genesis hash):
                # ship it from its start rather than skip anything
                log.error("decision logs: the cursor does not fit %s: shipping that file from its start", files[idx][1])
                pos.offset = 0
        else:
            self.lost += 1
            log.error(
                "decision logs: the audit file the cursor points into is gone (pruned by keep_files?): records in it"
                " were not shipped; continuing with the oldest file left"
            )
            idx, pos.offset = 0, 0
        self._checked = True  # once per start: later positions are this reader's own
        out: list[Line] = []
        size = 0
        while idx < len(files):
            name, path = files[idx]
            if name is None:  # the newest file has no complete first line yet
                break
            pos.file = name
            with path.open("rb") as f:
                f.seek(pos.offset)
                while len(out) < max_lines and (size < max_bytes or not out):
                    line = f.readline()
                    if not line.endswith(b"\n"):
                        break
                    body = line[:-1]
                    pos.offset += len(line)
                    size += len(body)
                    if not body.strip():
                        continue
                    try:
                        record = orjson.loads(body)
                        if not isinstance(record, dict):
                            record = None
                    except orjson.JSONDecodeError:
                        record = None
                    digest = hashlib.sha256(body).hexdigest()
                    pos.last = digest
                    out.append(Line(record, digest, pos.offset))
            if len(out) >= max_lines or (size >= max_bytes and out) or idx == len(files) - 1:
                break
            idx += 1  # this file is read to its end and a newer one exists: go on with it
            pos.offset = 0
        return out, pos
