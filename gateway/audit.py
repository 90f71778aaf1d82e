"""The append-only, hash-chained audit log, rotated by size.

One JSON line per event. Each line carries ``prev``, the SHA-256 of the line before it; the first line of a
file carries the last hash of the file it continues (the rotated file before it, or zeros for the very first),
so a deleted, edited or reordered line breaks the chain and ``mcp-gateway audit verify`` names it. A
decision's line is in the kernel before its call is forwarded, so a crash of the gateway loses no record of a
forwarded call; with ``fsync = true`` it is on disk too (a crash of the machine loses none either).

With ``fsync = true`` records are written by group commit: callers on the event loop hand their record to one
writer thread (``AuditLog.write``) and wait; the thread takes every record waiting, chains and writes them in
order with one ``write`` and one ``fdatasync``, and then wakes their callers. Concurrent calls share a flush
instead of each holding the event loop for one; each still waits for its own record to be on disk before its call
goes on. A batch the disk refuses is cut off the file again and fails every caller in it (nothing of it stays
in the chain), exactly as a refused single record did. Without fsync a record is one ``write`` on the caller's
thread: cheaper than a hop to a thread, and already in the kernel when it returns.

Rotation renames the active file to ``<path>.<seq>`` (zero-padded, so names sort oldest first) and starts a new
active file at ``<path>``. The chain runs on across files; a gateway restarted after a crash between the
rename and the first new record continues from the newest rotated file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson

GENESIS = "0" * 64
_SEQ_DIGITS = 6

log = logging.getLogger("gateway.audit")


def rotated_name(path: Path, seq: int) -> Path:
    return path.with_name(f"{path.name}.{seq:0{_SEQ_DIGITS}d}")


def rotated_files(path: Path) -> list[tuple[int, Path]]:
    """The rotated files of the active log ``path``, oldest first, with their sequence numbers."""
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)$")
    found = []
    try:
        entries = list(path.parent.iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        m = pattern.match(entry.name)
        if m and entry.is_file():
            found.append((int(m.group(1)), entry))
    return sorted(found)


def audit_set(path: Path) -> list[Path]:
    """Every file of the log ``path`` in chain order: rotated files oldest first, then the active one."""
    files = [p for _, p in rotated_files(path)]
    if path.exists():
        files.append(path)
    return files


def _last_line(path: Path) -> bytes | None:
    """The file's last non-empty line (read backwards, so a big file costs one block), or None if it has none."""
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            block = 1 << 16
            tail = b""
            pos = end
            while pos > 0:
                step = min(block, pos)
                pos -= step
                f.seek(pos)
                tail = f.read(step) + tail
                stripped = tail.rstrip(b"\n")
                if b"\n" in stripped or (pos == 0 and stripped):
                    return stripped.rsplit(b"\n", 1)[-1]
                block *= 2
    except FileNotFoundError:
        return None
    return None


def _ends_torn(path: Path) -> bool:
    """True when the file's last byte is not a newline: a crash cut its last record short."""
    try:
        with path.open("rb") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def chain_head(path: Path) -> str:
    """The hash a new record of the log ``path`` links to: the last line of the newest file that has one."""
    for candidate in reversed(audit_set(path)):
        line = _last_line(candidate)
        if line is not None:
            return hashlib.sha256(line).hexdigest()
    return GENESIS


_MAX_DEPTH = 64


def recordable(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` orjson can write and read back: what JSON cannot carry exactly becomes text.

    Integers beyond 64 bits become their decimal digits, NaN and infinities their names, keys that are not
    strings their ``str``, anything nested deeper than 64 levels (orjson's own limits are 254 to write and
    1024 to read) the text ``[too deep]``, and values of other types their type's name. Only used when the
    record as it is cannot be written, so the hot path never pays for it.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):  # a lone surrogate (valid in a JSON string escape) is not UTF-8
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth >= _MAX_DEPTH:
        return "[too deep]"
    if isinstance(value, dict):
        return {str(k): recordable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [recordable(v, depth + 1) for v in value]
    return f"[{type(value).__name__}]"


def encode_record(record: dict[str, Any]) -> bytes:
    """One record as a JSON line's bytes; never raises for any value a JSON parser can produce."""
    try:
        return orjson.dumps(record)
    except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
        return orjson.dumps(recordable(record))


def canonical(value: Any) -> bytes:
    """A canonical, injective byte form of any JSON value (sorted keys), for digests; never raises.

    orjson's form when it can write the value, else a JSON-like text of its own, written with an explicit
    stack (no recursion limit): integers of any size as digits, non-finite floats as ``NaN``/``Infinity``,
    strings as ASCII JSON strings. The fallback is prefixed with a byte no JSON text starts with, so it never
    collides with orjson's form of another value.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (TypeError, ValueError):
        pass
    out: list[bytes] = [b"\x00"]
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, _Token):
            out.append(v.text)
        elif v is None or isinstance(v, (bool, str)):
            out.append(json.dumps(v).encode())  # ASCII, so lone surrogates are escaped, not refused
        elif isinstance(v, int):
            out.append(str(v).encode())
        elif isinstance(v, float):
            out.append(
                repr(v).encode() if math.isfinite(v) else {"nan": b"NaN", "inf": b"Infinity"}.get(repr(v), b"-Infinity")
            )
        elif isinstance(v, dict):
            items = sorted(((str(k), x) for k, x in v.items()), key=lambda kv: kv[0])
            stack.append(_CLOSE_OBJ)
            for i, (k, x) in enumerate(reversed(items)):
                stack.append(x)
                stack.append(_Token(json.dumps(k).encode() + b":"))
                if i < len(items) - 1:
                    stack.append(_COMMA)
            stack.append(_OPEN_OBJ)
        elif isinstance(v, (list, tuple)):
            stack.append(_CLOSE_LIST)
            for i, x in enumerate(reversed(v)):
                stack.append(x)
                if i < len(v) - 1:
                    stack.append(_COMMA)
            stack.append(_OPEN_LIST)
        else:
            out.append(orjson.dumps(f"[{type(v).__name__}]"))
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class _Token:
    text: bytes


_OPEN_OBJ, _CLOSE_OBJ = _Token(b"{"), _Token(b"}")
_OPEN_LIST, _CLOSE_LIST = _Token(b"["), _Token(b"]")
_COMMA = _Token(b",")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class AuditLog:
    """Appends records to ``path``; single writer per path (one gateway process), any thread."""

    def __init__(
        self,
        path: Path,
        fsync: bool = False,
        max_file_bytes: int = 0,
        keep_files: int = 0,
        on_rotate: Callable[[], None] | None = None,
    ):
        self.path = path
        self._on_rotate = on_rotate
        path.parent.mkdir(parents=True, exist_ok=True)
        if _ends_torn(path):
            # A crash mid-line left a torn record: terminate it so the next record starts clean. The torn
            # line stays (it is evidence); the chain links over it and verify reports it as torn.
            with path.open("ab") as f:
                f.write(b"\n")
        self._prev = chain_head(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size
        self._fsync = fsync
        self._max = max_file_bytes
        self._keep = keep_files
        existing = rotated_files(path)
        self._seq = existing[-1][0] if existing else 0
        self._lock = threading.Lock()
        self.records = 0
        self.rotations = 0
        self.flushes = 0
        """Group commits made (``fsync = true``): records / flushes is the records a flush carried on average."""
        self._queue: list[_Waiting] = []
        self._wake = threading.Condition(threading.Lock())
        self._writer: threading.Thread | None = None
        self._closing = False

    @property
    def head(self) -> str:
        """The hash of the last record written: an anchor worth keeping outside the log."""
        return self._prev

    @property
    def grouped(self) -> bool:
        """Whether records go through the group-commit writer thread (``fsync = true``)."""
        return self._fsync

    async def write(self, record: dict[str, Any]) -> None:
        """Write one record and return once it is durable (on disk with fsync, else in the kernel); raises OSError
        when it could not be written (then nothing of it is). The caller must not touch ``record`` meanwhile.

        With fsync the record joins the next group commit and the wait is shielded from cancellation: the record
        is being written whatever the caller does, and the caller must learn whether it was.
        """
        if not self._fsync:
            self.append(record)
            return
        loop = asyncio.get_running_loop()
        waiting = _Waiting(record, loop, loop.create_future())
        self._enqueue(waiting)
        with anyio.CancelScope(shield=True):
            await waiting.future

    def append(self, record: dict[str, Any]) -> None:
        """Write one record synchronously; raises OSError when the record could not be written (then nothing is).

        Any JSON value in the record is written (``encode_record``): only the disk can refuse a record. With
        fsync the record joins the writer thread's next group commit (so the chain keeps one order) and this
        thread waits for it: use ``write`` on an event loop.
        """
        if self._fsync:
            waiting = _Waiting(record, None, threading.Event())
            self._enqueue(waiting)
            waiting.future.wait()
            if waiting.error is not None:
                raise waiting.error
            return
        with self._lock:
            if self._fd < 0:
                raise OSError("the audit log is closed")
            record["prev"] = self._prev
            line = encode_record(record)
            data = line + b"\n"
            if self._max and self._size and self._size + len(data) > self._max:
                self._rotate()
            try:
                _write_all(self._fd, data)
                if self._fsync:
                    os.fdatasync(self._fd)
            except OSError:
                self._undo_partial()
                raise
            self._size += len(data)
            self._prev = hashlib.sha256(line).hexdigest()
            self.records += 1

    def _enqueue(self, waiting: _Waiting) -> None:
        with self._wake:
            if self._closing:
                raise OSError("the audit log is closed")
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="audit-writer", daemon=True)
                self._writer.start()
            self._queue.append(waiting)
            self._wake.notify()

    def _write_loop(self) -> None:
        """The writer thread: commit whatever is waiting, one batch at a time, until closed and drained."""
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                batch, self._queue = self._queue, []
                if not batch:
                    return
            try:
                self._commit(batch)
            except BaseException as exc:  # never leave a caller waiting, whatever happened
                log.exception("audit log %s: group commit failed", self.path)
                _wake_all(batch, exc if isinstance(exc, OSError) else OSError(f"audit write failed: {exc!r}"))

    def _commit(self, batch: list[_Waiting]) -> None:
        """Chain, write and flush a batch: all of it is durable, or none of it stays in the file."""
        with self._lock:
            if self._fd < 0:
                _wake_all(batch, OSError("the audit log is closed"))
                return
            done = 0
            while done < len(batch):
                # Records up to the size limit go in one write; the next one starts a new file.
                prev, chunk, size, end = self._prev, bytearray(), self._size, done
                while end < len(batch):
                    batch[end].record["prev"] = prev
                    line = encode_record(batch[end].record)
                    if self._max and (size or chunk) and size + len(chunk) + len(line) + 1 > self._max:
                        if chunk:
                            break
                        self._rotate()
                        size = self._size
                    chunk += line
                    chunk += b"\n"
                    prev = hashlib.sha256(line).hexdigest()
                    end += 1
                try:
                    _write_all(self._fd, bytes(chunk))
                    os.fdatasync(self._fd)
                except OSError as exc:
                    self._undo_partial()
                    _wake_all(batch[done:], exc)
                    return
                self._size += len(chunk)
                self._prev = prev
                self.records += end - done
                self.flushes += 1
                _wake_all(batch[done:end], None)
                done = end

    def _undo_partial(self) -> None:
        """Cut a partly written record off again, so a failed write leaves no torn line behind."""
        try:
            if os.fstat(self._fd).st_size != self._size:
                os.ftruncate(self._fd, self._size)
        except OSError as exc:
            log.error("audit log %s: cannot remove a partly written record: %s", self.path, exc)

    def _rotate(self) -> None:
        """Start a new active file; on failure keep writing the current one (availability over file size)."""
        target = rotated_name(self.path, self._seq + 1)
        try:
            if self._fsync:
                os.fsync(self._fd)
            os.rename(self.path, target)
        except OSError as exc:
            log.error("audit log %s: rotation failed, still writing the current file: %s", self.path, exc)
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.error("audit log %s: cannot open a new file, still writing %s: %s", self.path, target, exc)
            try:
                os.rename(target, self.path)
            except OSError:
                pass
            return
        os.close(self._fd)
        self._fd = fd
        self._seq += 1
        self._size = 0
        self.rotations += 1
        if self._fsync:
            _fsync_dir(self.path.parent)
        # The chain's head at the cut, in the gateway's log: an anchor outside the audit files themselves.
        log.info("audit log rotated to %s; chain head %s", target.name, self._prev)
        self._prune()
        if self._on_rotate is not None:
            self._on_rotate()

    def _prune(self) -> None:
        if not self._keep:
            return
        old = rotated_files(self.path)
        for _, p in old[: max(0, len(old) - self._keep)]:
            try:
                p.unlink()
                log.info("audit log: deleted %s (keep_files = %d)", p.name, self._keep)
            except OSError as exc:
                log.error("audit log: cannot delete %s: %s", p, exc)

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
            writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join()  # the records already handed over are committed first
        with self._lock:
            if self._fd >= 0:
                if self._fsync:
                    try:
                        os.fsync(self._fd)
                    except OSError:
                        pass
                os.close(self._fd)
                self._fd = -1


@dataclass(slots=True)
class _Waiting:
    """A record handed to the writer thread, and how its caller is woken: an asyncio future of ``loop``, or a
    threading Event for a caller on another thread."""

    record: dict[str, Any]
    loop: asyncio.AbstractEventLoop | None
    future: Any
    error: OSError | None = None


def _wake_all(batch: list[_Waiting], error: OSError | None) -> None:
    """Wake the callers of a batch: one call into each event loop for all of its callers."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Waiting]] = {}
    for w in batch:
        w.error = error
        if w.loop is None:
            w.future.set()
        else:
            by_loop.setdefault(w.loop, []).append(w)
    for loop, waiting in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, waiting)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


def _settle(waiting: list[_Waiting]) -> None:
    for w in waiting:
        if not w.future.done():
            if w.error is None:
                w.future.set_result(None)
            else:  # each caller its own exception object (a shared one would collect every caller's traceback)
                w.future.set_exception(OSError(*w.error.args))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class VerifyResult:
    ok: bool
    records: int
    message: str
    head: str | None = None
    """Hash of the last record: compare it with an anchor kept elsewhere to detect a cut-off tail."""
    start: str | None = None
    """The ``prev`` of the first record: zeros when the chain starts at the very first record ever written."""
    torn: list[str] | None = None
    """``file:line`` of records a crash cut short (the chain links over them)."""


def chain_order(paths: Iterable[Path]) -> list[Path]:
    """Put files of rotated sets in chain order: ``X.000001`` .. ``X.00000N``, then the active ``X``."""

    def key(p: Path) -> tuple[str, str, int]:
        m = re.match(r"^(.*)\.(\d+)$", p.name)
        if m and len(m.group(2)) >= _SEQ_DIGITS:
            return (str(p.parent), m.group(1), int(m.group(2)))
        return (str(p.parent), p.name, 1 << 62)

    return sorted(paths, key=key)


def verify_chain(paths: Iterable[Path], start: str | None = None, head: str | None = None) -> VerifyResult:
    """Check the hash chain across files given in chain order; report the first broken link.

    ``start``: the ``prev`` the first record must carry (``GENESIS`` when the set must begin the chain);
    ``head``: the hash the last record must have (an anchor kept outside the log, which finds a cut-off tail).
    """
    prev: str | None = start
    first: str | None = None
    count = 0
    torn: list[str] = []
    pending_torn: tuple[str, str] | None = None  # (where, its hash) of an unparseable line awaiting its successor
    for path in paths:
        try:
            f = path.open("rb")
        except OSError as exc:
            return VerifyResult(False, count, f"{path}: cannot read: {exc.strerror or exc}", prev, first)
        with f:
            for lineno, raw in enumerate(f, 1):
                line = raw.rstrip(b"\n")
                if not line:
                    continue
                where = f"{path}:{lineno}"
                try:
                    rec = orjson.loads(line)
                    link = rec["prev"]
                    if not isinstance(link, str):
                        raise TypeError
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    if pending_torn is not None:
                        return VerifyResult(False, count, f"{pending_torn[0]}: not an audit record", prev, first)
                    if not line.startswith(b"{"):  # a torn record is the start of one; this is something else
                        return VerifyResult(False, count, f"{where}: not an audit record", prev, first)
                    pending_torn = (where, hashlib.sha256(line).hexdigest())
                    continue
                if pending_torn is not None:
                    # A line that is not a record is accepted only as a crash's torn record the chain links over.
                    if link != pending_torn[1]:
                        return VerifyResult(False, count, f"{pending_torn[0]}: not an audit record", prev, first)
                    torn.append(pending_torn[0])
                    prev = link
                    pending_torn = None
                if first is None:
                    first = link
                    if prev is None:
                        prev = link  # the first file may continue an older one we were not given
                if link != prev:
                    what = "the start given" if count == 0 else "the record before it"
                    return VerifyResult(
                        False,
                        count,
                        f"{where}: chain broken: prev does not match {what} "
                        f"(a record before it was removed, edited or reordered)",
                        prev,
                        first,
                    )
                prev = hashlib.sha256(line).hexdigest()
                count += 1
    if pending_torn is not None:
        torn.append(pending_torn[0])  # a crash's torn last line, not yet linked over
    if head is not None and prev != head:
        return VerifyResult(
            False,
            count,
            f"chain ends at {prev}, not at the expected head {head} (records after it are missing)",
            prev,
            first,
        )
    origin = "from the first record ever written" if first in (None, GENESIS) else f"continuing from {first}"
    msg = f"{count} records, chain intact {origin}; head {prev or GENESIS}"
    if torn:
        msg += f"; {len(torn)} torn by a crash: {', '.join(torn)}"
    return VerifyResult(True, count, msg, prev, first, torn)


_random_ids: list[bytes] = []
os.register_at_fork(after_in_child=_random_ids.clear)  # a child must not hand out its parent's ids again


def new_decision_id() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` but cheaper: 256 ids' worth of randomness come
    from one ``os.urandom`` call (a system call costs microseconds on a busy virtual machine)."""
    if not _random_ids:
        raw = os.urandom(16 * 256)
        _random_ids.extend(raw[i : i + 16] for i in range(0, len(raw), 16))
    n = int.from_bytes(_random_ids.pop(), "big") & _UUID_CLEAR | _UUID_V4
    h = n.to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_V4 = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


_second: tuple[int, str] = (-1, "")
"""The last second formatted (every record has a timestamp, most in the same second as the one before)."""


def now_iso(ns: int | None = None) -> str:
    global _second
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    second = _second
    if second[0] != secs:
        second = _second = (secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)))
    return f"{second[1]}.{frac // 1000:06d}Z"
