"""Log lines cannot be forged or made to drive a terminal by what an agent sends (issue 9, finding 5).

A tool name carrying a newline, a made-up record and ANSI escapes is sent to the real gateway; the text log
gets it escaped on the call's own line, the JSON log stays one valid JSON document per line.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import orjson
import pytest

from tests.conftest import default_config, free_port, start_gateway, stdio_upstream
from tests.test_protocol_bad_input import headers, open_session
from tests.test_resilience_upstream import RECORDER, allow_all_policy

FORGED = "2099-01-01 00:00:00,000 INFO gateway.call: tools/call rec__echo by admin: ok in 1.00 ms"
NAME = "rec__x\n" + FORGED + "\x1b[2J\x1b[31m\r\u2028\u0085\u202e\x7f"


def send_calls(url: str, sid: str) -> None:
    raw = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":' + orjson.dumps(NAME) + b',"arguments":{}}}'
    r = httpx2.post(url, content=raw, headers=headers("ci-bot", sid) | {"MCP-Protocol-Version": "2025-11-25"})
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module", params=["text", "json"])
def logged(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes]]:
    fmt = request.param
    workdir, port = tmp_path_factory.mktemp(f"log-{fmt}"), free_port()
    upstream = stdio_upstream("rec", RECORDER, f'env = {{ RECORD_FILE = "{workdir / "rec.jsonl"}" }}\n')
    config = default_config(port, workdir, upstream, f'[logging]\nformat = "{fmt}"\n', allow_all_policy(workdir))
    gw = start_gateway(workdir, config, port)
    try:
        send_calls(gw.url, open_session(gw))
    finally:
        gw.stop()
    yield fmt, gw.log.read_bytes()


def test_no_forged_line_and_no_terminal_control(logged: tuple[str, bytes]) -> None:
    fmt, data = logged
    text = data.decode("utf-8")
    for line in text.splitlines():
        assert not line.startswith("2099"), line
        assert not line.lstrip().startswith('{"ts":"2099'), line
    for ch in ("\x1b", "\r", "\u2028", "\u0085", "\u202e"):
        assert ch not in text, repr(ch)
    if fmt == "json":
        docs = [orjson.loads(line) for line in data.splitlines() if line.strip()]  # every line valid JSON
        assert any(NAME in str(d.get("msg", "")) for d in docs)  # the call was logged, whole
    else:
        assert "rec__x\\n2099-01-01" in text and "\\x1b[2J" in text  # the call was logged, escaped
