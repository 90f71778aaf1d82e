"""Newline-delimited JSON from a byte stream: how stdio MCP servers speak.

This runs for every message an upstream sends, so it copies as little as it can: the buffer is cut once per chunk
(not once per line), and a long line (a 10 MB result) is parsed in place through a memoryview instead of being
copied out first (which halves the time and the peak memory such a result costs).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

NOT_JSON: Any = object()
"""Yielded for a line that is not JSON (blank lines are skipped)."""
_BLANK: Any = object()

_IN_PLACE = 64 * 1024
"""Lines longer than this are parsed in place; copying a short one is cheaper than a memoryview."""


class LineTooLong(Exception):
    pass


class JsonLines:
    """Feed it the stream's chunks; it yields the JSON value of every complete line."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> Iterator[Any]:
        """The values of the lines this chunk completes; LineTooLong once an unfinished line exceeds max_bytes."""
        buf = self._buf
        scan = len(buf)
        buf += chunk
        start = 0
        while (nl := buf.find(b"\n", scan)) >= 0:
            value = self._parse(buf, start, nl)
            start = scan = nl + 1
            if value is not _BLANK:
                yield value
        if start:
            del buf[:start]
        if len(buf) > self.max_bytes:
            raise LineTooLong(f"a message over {self.max_bytes} bytes")

    @staticmethod
    def _parse(buf: bytearray, start: int, end: int) -> Any:
        try:
            if end - start <= _IN_PLACE:
                return orjson.loads(buf[start:end])
            with memoryview(buf) as view, view[start:end] as line:  # released before the buffer is cut
                return orjson.loads(line)
        except orjson.JSONDecodeError:
            return _BLANK if not buf[start:end].strip() else NOT_JSON
