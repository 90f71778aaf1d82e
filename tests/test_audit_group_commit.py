"""Group commit of the audit log (``fsync = true``): concurrent records share a flush on the writer thread, each
caller waits for its own record, the chain stays whole and ordered, and a write the disk refuses refuses its calls
(nothing of the failed batch stays in the file; the call is not forwarded)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from gateway.audit import AuditLog, audit_set, verify_chain
from tests.conftest import ECHO, KEYS, REPO, default_config, free_port, mcp_client, start_gateway, stdio_upstream

pytestmark = pytest.mark.anyio

RECORDER = [sys.executable, str(REPO / "tests" / "fixtures" / "recording_server.py")]
FSYNC = "[audit]\nfsync = true\n"


def verify_cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify", str(path)], cwd=REPO, capture_output=True, text=True
    )


def records(path: Path) -> list[dict]:
    return [json.loads(line) for p in audit_set(path) for line in p.read_bytes().splitlines() if line]


async def test_concurrent_writers_share_flushes_and_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=True, max_file_bytes=8192)
    written: list[str] = []

    async def writer(i: int) -> None:
        for j in range(10):
            await log.write({"type": "decision", "decision_id": f"{i}-{j}", "pad": "x" * 100})
            written.append(f"{i}-{j}")  # only once it is durable

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(writer, i)
    log.append({"type": "outcome", "decision_id": "sync"})  # a caller off the event loop joins the same order
    log.close()
    found = [r["decision_id"] for r in records(path)]
    assert sorted(found) == sorted([*written, "sync"]) and len(found) == 401
    assert log.records == 401 and log.flushes < log.records  # flushes were shared
    assert log.rotations > 0  # rotation still cuts at the size limit inside a batch
    result = verify_chain(audit_set(path))
    assert result.ok and result.records == 401, result.message
    assert verify_cli(path).returncode == 0
    with pytest.raises(OSError):
        await log.write({"type": "decision", "decision_id": "after close"})


async def test_a_cancelled_caller_still_learns_its_record_is_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=True)
    with anyio.CancelScope() as scope:
        scope.cancel()  # cancelled before it starts: the write is shielded and completes
        await log.write({"type": "decision", "decision_id": "cancelled"})
    log.close()
    assert [r["decision_id"] for r in records(path)] == ["cancelled"]


async def test_many_concurrent_calls_through_the_gateway_are_all_recorded(tmp_path: Path) -> None:
    port = free_port()
    config = default_config(port, tmp_path, stdio_upstream("echo", ECHO)).replace("[audit]\n", FSYNC)
    gw = start_gateway(tmp_path, config, port)
    try:
        texts: list[str] = []

        async def agent(i: int) -> None:
            async with mcp_client(gw.url, KEYS["ci-bot"][2], "legacy" if i % 2 else "auto") as c:
                for j in range(8):
                    r = await c.call_tool("echo__echo", {"text": f"call {i}-{j}"})
                    assert not r.is_error and r.content[0].text == f"call {i}-{j}"  # type: ignore[union-attr]
                    texts.append(f"call {i}-{j}")

        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(agent, i)
    finally:
        gw.stop()
    recs = records(gw.audit)
    calls = [r["decision_id"] for r in recs if r["type"] == "decision" and r["action"] == "tools/call"]
    assert len(set(calls)) == len(calls) == len(texts) == 96
    outcomes = {r["decision_id"]: r["outcome"] for r in recs if r["type"] == "outcome"}
    assert all(outcomes.get(d) == "ok" for d in calls)
    verify = verify_cli(gw.audit)
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    path = disk / "filler"
    with path.open("wb", buffering=0) as f:
        chunk = b"\0" * 65536
        while chunk:
            try:
                f.write(chunk)
            except OSError:
                chunk = chunk[: len(chunk) // 2]
    return path


async def test_a_refused_write_refuses_the_call_and_leaves_no_trace(small_disk: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "gw"
    workdir.mkdir()
    received = tmp_path / "received.jsonl"
    port = free_port()
    upstream = stdio_upstream("rec", RECORDER, f'env = {{ RECORD_FILE = "{received}" }}\n')
    config = default_config(port, workdir, upstream).replace("[audit]\n", FSYNC)
    config = config.replace(f'path = "{workdir / "audit.jsonl"}"', f'path = "{small_disk / "audit.jsonl"}"')
    policy = workdir / "rego"
    policy.mkdir()
    (policy / "p.rego").write_text('package gateway\nimport rego.v1\ndecision := {"allow": true, "reasons": []}\n')
    config = config.replace(f'path = "{REPO / "rego"}"', f'path = "{policy}"')
    gw = start_gateway(workdir, config, port, ready_timeout=120)
    audit = small_disk / "audit.jsonl"
    try:
        async with mcp_client(gw.url, KEYS["ci-bot"][2]) as c:
            assert not (await c.call_tool("rec__echo", {"text": "before"})).is_error  # the positive control
            before = audit.read_bytes()
            filler = fill(small_disk)
            results = []

            async def call(i: int) -> None:
                try:
                    results.append(await c.call_tool("rec__echo", {"text": f"refused {i}"}))
                except MCPError as exc:
                    results.append(exc)

            async with anyio.create_task_group() as tg:  # concurrent calls: they share the failed flush
                for i in range(4):
                    tg.start_soon(call, i)
            assert len(results) == 4
            for err in results:
                assert isinstance(err, MCPError), "a call whose record was not written went ahead"
                assert "cannot record this request, so it was not made" in err.message
            assert b"refused" not in received.read_bytes()  # never forwarded
            assert audit.read_bytes() == before  # the failed batch was cut off again
            filler.unlink()
            r = await c.call_tool("rec__echo", {"text": "after"})  # with room again, calls go on
            assert not r.is_error
    finally:
        gw.stop()
    assert b"after" in received.read_bytes()
    verify = verify_cli(audit)
    assert verify.returncode == 0 and "torn" not in verify.stdout, verify.stdout + verify.stderr
