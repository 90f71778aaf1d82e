"""No audit record is lost when the gateway dies: SIGKILL it under concurrent load (with rotation going on), then
every call a client saw succeed has its decision and outcome records, the rotated set verifies, and a restarted
gateway continues the same chain.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import orjson
import pytest

from gateway.audit import GENESIS, audit_set, verify_chain
from gateway.decide import digest
from tests.conftest import ECHO, KEYS, default_config, free_port, mcp_client, start_gateway, stdio_upstream

pytestmark = pytest.mark.anyio

CLIENTS = 4
KILL_AFTER = 60  # successful calls before the kill; the other clients have calls in flight at that moment


def read_records(path: Path) -> list[dict]:
    out = []
    for f in audit_set(path):
        for line in f.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                pass  # a record torn by the kill: verify reports it; it cannot be one of a forwarded call
    return out


def config(workdir: Path, fsync: bool) -> tuple[str, int]:
    port = free_port()
    audit = f"fsync = {'true' if fsync else 'false'}\nmax_file_bytes = 65536\n"
    text = default_config(port, workdir, stdio_upstream("echo", ECHO))
    return text.replace("[audit]\n", "[audit]\n" + audit), port


@pytest.mark.parametrize("fsync", [False, True], ids=["page-cache", "fsync"])
async def test_sigkill_mid_load_loses_no_record_of_a_completed_call(tmp_path: Path, fsync: bool) -> None:
    text, port = config(tmp_path, fsync)
    gw = start_gateway(tmp_path, text, port)
    succeeded: list[str] = []
    killed = anyio.Event()

    async def client(n: int) -> None:
        try:
            async with mcp_client(gw.url, KEYS["ci-bot"][2]) as c:
                i = 0
                while not killed.is_set():
                    payload = f"client-{n}-call-{i}"
                    result = await c.call_tool("echo__echo", {"text": payload})
                    if not result.is_error and result.content[0].text == payload:  # type: ignore[union-attr]
                        succeeded.append(payload)
                    i += 1
                    if len(succeeded) >= KILL_AFTER and not killed.is_set():
                        os.kill(gw.proc.pid, signal.SIGKILL)
                        killed.set()
        except Exception:
            if not killed.is_set():
                raise  # failing before the kill is a defect, not the scenario

    try:
        with anyio.fail_after(120):  # a guard against a hung client, not a timing assertion
            async with anyio.create_task_group() as tg:
                for n in range(CLIENTS):
                    tg.start_soon(client, n)
    finally:
        gw.stop()
    assert gw.proc.returncode == -signal.SIGKILL
    assert len(succeeded) >= KILL_AFTER

    records = read_records(gw.audit)
    decisions = {r["arguments_digest"]: r for r in records if r["type"] == "decision" and r["action"] == "tools/call"}
    outcomes = {r["decision_id"]: r for r in records if r["type"] == "outcome"}
    for payload in succeeded:
        decision = decisions.get(digest({"text": payload}))
        assert decision is not None, f"no decision record for a call the client saw succeed: {payload}"
        assert decision["allow"] is True
        assert outcomes[decision["decision_id"]]["outcome"] == "ok"
    files = audit_set(gw.audit)
    assert len(files) >= 2, "the load was meant to rotate the log at least once"
    result = verify_chain(files, start=GENESIS)
    assert result.ok, result.message

    # A gateway started again on the same log continues the chain it left.
    text, port = config(tmp_path, fsync)
    gw2 = start_gateway(tmp_path / "again", text, port)
    try:
        async with mcp_client(gw2.url, KEYS["ci-bot"][2]) as c:
            assert not (await c.call_tool("echo__echo", {"text": "after the crash"})).is_error
    finally:
        gw2.stop()
    result = verify_chain(audit_set(gw.audit), start=GENESIS)
    assert result.ok, result.message
    assert any(r.get("arguments_digest") == digest({"text": "after the crash"}) for r in read_records(gw.audit))
