"""Newline-delimited JSON as stdio upstreams send it, split across and within chunks as pipes deliver it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from connectors.lines import NOT_JSON, JsonLines, LineTooLong


def feed_all(lines: JsonLines, chunks: list[bytes]) -> list[Any]:
    return [value for chunk in chunks for value in lines.feed(chunk)]


def test_lines_split_anyhow_across_chunks() -> None:
    stream = b'{"id": 1}\n{"id": 2}\r\n\n   \n[3]\nnot json\n{"id": "\xc3\xa9"}\n{"id": 4'
    for size in (1, 2, 7, 64, len(stream)):
        lines = JsonLines(1 << 20)
        values = feed_all(lines, [stream[i : i + size] for i in range(0, len(stream), size)])
        assert values == [{"id": 1}, {"id": 2}, [3], NOT_JSON, {"id": "é"}], size
        assert list(lines.feed(b"}\n")) == [{"id": 4}]  # the unfinished line was kept


def test_a_long_line_is_parsed_whole() -> None:
    message = {"jsonrpc": "2.0", "id": 7, "result": {"text": "x" * (3 << 20)}}
    data = orjson.dumps(message) + b"\n" + b'{"id": 8}\n'
    lines = JsonLines(8 << 20)
    assert feed_all(lines, [data[i : i + 65536] for i in range(0, len(data), 65536)]) == [message, {"id": 8}]
    assert list(lines.feed(b"x" * (200 << 10) + b"\n")) == [NOT_JSON]  # long, in place, and not JSON


def test_an_unfinished_line_over_the_limit_is_refused() -> None:
    lines = JsonLines(1000)
    assert list(lines.feed(b'{"ok": 1}\n' + b"x" * 1000)) == [{"ok": 1}]
    with pytest.raises(LineTooLong):
        list(lines.feed(b"x"))
