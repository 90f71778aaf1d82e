"""[decision_logs]: every audit record (with its replica_id) reaches a central sink in OPA's decision-log format,
at least once: gzip-compressed JSON arrays POSTed in batches, read from the local hash-chained log behind a durable
cursor. A sink that is down loses nothing; a restart (clean or kill -9) resumes where shipping stopped. Driven
through the real gateway, the real SDK client and a real HTTP sink."""

from __future__ import annotations

import hashlib
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from gateway.audit import AuditLog, audit_set
from gateway.decisionlogs.cursor import LogReader
from gateway.fleet.config import default_replica_id
from tests.conftest import (
    ECHO,
    KEYS,
    RunningGateway,
    default_config,
    free_port,
    mcp_client,
    start_gateway,
    stdio_upstream,
)
from tests.fixtures.log_sink import LogSink

pytestmark = pytest.mark.anyio


def _wait(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def _lines(gw: RunningGateway) -> list[tuple[str, dict[str, Any]]]:
    """(hash of the line, record) of every record in the gateway's audit log, rotated files included."""
    out = []
    for path in audit_set(gw.audit):
        for line in path.read_bytes().splitlines():
            if line.strip():
                out.append((hashlib.sha256(line).hexdigest(), orjson.loads(line)))
    return out


def _gateway(tmp_path: Path, sink: LogSink, extra: str = "") -> RunningGateway:
    port = free_port()
    section = (
        f'[decision_logs]\nurl = "{sink.url}"\ninterval_s = 0.2\nbatch_size = 3\ntoken = "${{SINK_TOKEN}}"\n{extra}'
    )
    config = default_config(port, tmp_path, stdio_upstream("echo", ECHO), extra=section)
    return start_gateway(tmp_path, config, port, env={"SINK_TOKEN": "sink-secret"})


async def _calls(gw: RunningGateway, n: int) -> None:
    async with mcp_client(gw.url, KEYS["ci-bot"][2]) as c:
        for i in range(n):
            result = await c.call_tool("echo__echo", {"text": f"call {i}"})
            assert not result.is_error


def _all_shipped(gw: RunningGateway, sink: LogSink) -> Callable[[], bool]:
    return lambda: {h for h, _ in _lines(gw)} <= {e["event_id"] for e in sink.snapshot()}


async def test_records_reach_the_sink_in_opas_format(tmp_path: Path) -> None:
    with LogSink(token="sink-secret") as sink:
        gw = _gateway(tmp_path, sink)
        try:
            await _calls(gw, 5)
            _wait(_all_shipped(gw, sink), "every record shipped")
        finally:
            gw.stop()
        records = dict(_lines(gw))
        events = {e["event_id"]: e for e in sink.snapshot()}
        replica = default_replica_id()
        assert all(r["replica_id"] == replica for r in records.values())  # every record names its replica
        decisions = [e for e in events.values() if e["type"] == "decision" and e.get("action") == "tools/call"]
        assert len(decisions) == 5
        for e in decisions:
            rec = records[e["event_id"]]
            assert e["decision_id"] == rec["decision_id"] and e["path"] == "gateway/decision"
            assert e["input"] == rec["input"] and e["result"] == rec["result"] and e["result"]["allow"] is True
            assert e["bundles"]["gateway"]["revision"] == rec["bundles"]["gateway"]["revision"]
            assert e["labels"]["id"] == e["labels"]["replica_id"] == replica and e["labels"]["version"]
            assert e["timestamp"] == rec["timestamp"] and "requested_by" in e and e["metrics"] == {}
        outcomes = {e["decision_id"] for e in events.values() if e["type"] == "outcome"}
        assert {e["decision_id"] for e in decisions} <= outcomes  # outcomes go too, joined by decision_id
        ok = [r for r in sink.requests if r["status"] == 200]
        assert len(ok) >= 2  # batch_size 3: more than one POST
        assert all(r["headers"]["Content-Encoding"] == "gzip" for r in ok)
        assert all(r["headers"]["Authorization"] == "Bearer sink-secret" for r in ok)
        assert "sink-secret" not in gw.log.read_text()


async def test_a_sink_that_is_down_loses_nothing_and_restarts_resume(tmp_path: Path) -> None:
    sink = LogSink(port=free_port()).start()
    gw = _gateway(tmp_path, sink)
    try:
        await _calls(gw, 2)
        _wait(_all_shipped(gw, sink), "first records shipped")
        sink.stop()  # the sink is down: connections refused
        await _calls(gw, 4)
        metrics = lambda: httpx2.get(gw.admin_base + "/metrics").text  # noqa: E731
        _wait(lambda: "mcp_gateway_decision_logs_errors_total 0.0" not in metrics(), "failed uploads counted")
        ready = httpx2.get(gw.admin_base + "/readyz").json()
        assert ready["ready"] is True and ready["decision_logs"]["last_error"]  # shown, not a reason to be unready
        sink.start()  # back on the same port: everything written meanwhile arrives
        _wait(_all_shipped(gw, sink), "records of the outage shipped")

        # a clean stop ships what is left and marks it: a restart resumes after it, shipping nothing twice
        await _calls(gw, 1)
    finally:
        gw.stop()
    _wait(_all_shipped(gw, sink), "shipped at shutdown", timeout=5)
    assert (tmp_path / "audit.jsonl.cursor").exists()
    before = len(sink.snapshot())
    gw = _gateway(tmp_path, sink)
    try:
        await _calls(gw, 2)
        _wait(_all_shipped(gw, sink), "records after the restart shipped")
        ids = [e["event_id"] for e in sink.snapshot()]
        assert len(ids) == len(set(ids)), "a clean restart ships nothing twice"
        assert len(ids) > before

        # kill -9 with the sink down: what was not shipped goes after the next start (at least once)
        sink.stop()
        await _calls(gw, 3)
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait()
    finally:
        gw.stop()
    sink.start()
    gw = _gateway(tmp_path, sink)
    try:
        _wait(_all_shipped(gw, sink), "records written before the kill shipped after the restart")
    finally:
        gw.stop()
    chain = [h for h, _ in _lines(gw)]
    assert set(chain) == {e["event_id"] for e in sink.snapshot()}


def test_the_reader_follows_rotation_and_resumes_from_its_cursor(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", max_file_bytes=600)
    cursor = tmp_path / "audit.jsonl.cursor"
    written = []
    for i in range(40):
        audit.append({"type": "decision", "n": i, "pad": "x" * 50})
        written.append(i)
        if i == 17:  # read part of it, mark it, and carry on with a new reader (a restart)
            reader = LogReader(audit.path, cursor)
            lines, pos = reader.read(10, 1 << 20)
            reader.save(pos)
            assert [ln.record["n"] for ln in lines if ln.record] == list(range(10))
    assert len(audit_set(audit.path)) > 3  # rotated several times
    reader = LogReader(audit.path, cursor)
    seen = list(range(10))
    while True:
        lines, pos = reader.read(7, 1 << 20)
        if not lines:
            break
        seen += [ln.record["n"] for ln in lines if ln.record]
        reader.save(pos)
    assert seen == written
    audit.close()


async def test_a_sink_that_hangs_never_holds_up_a_call(tmp_path: Path) -> None:
    """The shipper reads the log behind the writer: a sink that accepts a POST and never answers delays shipping
    only; calls go on, each decided and recorded locally first, and everything arrives once the sink answers."""
    with LogSink() as sink:
        sink.hang.set()
        gw = _gateway(tmp_path, sink, "timeout_s = 600\n")
        try:
            await _calls(gw, 1)
            _wait(lambda: sink.received == 1 and not sink.requests, "an upload held by the sink")
            await _calls(gw, 6)  # all answered while the upload hangs
            assert not _all_shipped(gw, sink)()
            sink.release()
            _wait(_all_shipped(gw, sink), "everything shipped once the sink answers")
        finally:
            sink.release()
            gw.stop()


def test_a_log_begun_again_is_shipped_from_its_start(tmp_path: Path) -> None:
    """A cursor that does not fit the file it names (the log was deleted and a new chain began from the same genesis
    hash) ships that file from its start: at least once, never a silent skip."""
    path, cursor = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.cursor"
    audit = AuditLog(path)
    for i in range(5):
        audit.append({"type": "decision", "n": i, "pad": "x" * 40})
    audit.close()
    reader = LogReader(path, cursor)
    lines, pos = reader.read(100, 1 << 20)
    reader.save(pos)
    path.unlink()
    audit = AuditLog(path)
    audit.append({"type": "decision", "n": 100})
    audit.append({"type": "decision", "n": 101, "pad": "y" * 10})
    audit.close()
    lines, _ = LogReader(path, cursor).read(100, 1 << 20)
    assert [ln.record["n"] for ln in lines if ln.record] == [100, 101]
