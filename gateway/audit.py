"""The append-only, hash-chained audit log.

One JSON line per event. Each line carries ``prev``, the SHA-256 of the line before it (the first line of a
file carries the last hash of the file it continues, or zeros), so a deleted or edited line breaks the chain
and ``mcp-gateway audit verify`` finds it. A decision's line is in the kernel before its call is forwarded;
with ``fsync = true`` it is on disk.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

GENESIS = "0" * 64


def _last_hash(path: Path) -> str:
    """The chain hash to continue from: the digest of the file's last complete line."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            if end == 0:
                return GENESIS
            block = min(end, 1 << 20)
            f.seek(end - block)
            tail = f.read(block)
    except FileNotFoundError:
        return GENESIS
    lines = tail.rstrip(b"\n").split(b"\n")
    return hashlib.sha256(lines[-1]).hexdigest()


class AuditLog:
    def __init__(self, path: Path, fsync: bool = False):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._prev = _last_hash(path)
        if path.exists() and path.stat().st_size and not path.read_bytes()[-1:] == b"\n":
            # A crash mid-line left a torn record: terminate it so the next record starts clean.
            with path.open("ab") as f:
                f.write(b"\n")
            self._prev = _last_hash(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._fsync = fsync
        self.records = 0

    def append(self, record: dict[str, Any]) -> None:
        """Write one record synchronously; raises OSError when the record could not be written."""
        record["prev"] = self._prev
        line = orjson.dumps(record)
        os.write(self._fd, line + b"\n")
        if self._fsync:
            os.fsync(self._fd)
        self._prev = hashlib.sha256(line).hexdigest()
        self.records += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass
class VerifyResult:
    ok: bool
    records: int
    message: str


def verify_chain(paths: Iterable[Path]) -> VerifyResult:
    """Check the hash chain across files given in order; report the first broken link."""
    prev: str | None = None
    count = 0
    for path in paths:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.rstrip(b"\n")
                if not line:
                    continue
                try:
                    rec = orjson.loads(line)
                    link = rec["prev"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    return VerifyResult(False, count, f"{path}:{lineno}: not an audit record")
                if prev is None:
                    prev = link  # the first file may continue an older one we were not given
                if link != prev:
                    return VerifyResult(
                        False, count, f"{path}:{lineno}: chain broken (a record before it was removed or edited)"
                    )
                prev = hashlib.sha256(line).hexdigest()
                count += 1
    return VerifyResult(True, count, f"{count} records, chain intact")


def now_iso(ns: int | None = None) -> str:
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac // 1000:06d}Z"
