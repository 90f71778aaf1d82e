"""The audit hash chain across rotated files: rotation, restart, crash-torn records, and tampering of every kind
(edit, delete, reorder, a missing file, a cut-off tail) found by ``mcp-gateway audit verify``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from gateway.audit import GENESIS, AuditLog, audit_set, chain_order, rotated_files, verify_chain
from tests.conftest import REPO


def write(log: AuditLog, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        log.append({"type": "decision", "decision_id": f"d-{i}", "allow": i % 3 != 0, "pad": "x" * 100})


def lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n") if line]


def verify_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


@pytest.fixture
def rotated(tmp_path: Path) -> Path:
    """A log of 40 records rotated at ~1 KiB: several files, chained."""
    path = tmp_path / "audit.jsonl"
    rotations: list[int] = []
    log = AuditLog(path, max_file_bytes=1024, on_rotate=lambda: rotations.append(1))
    write(log, 40)
    log.close()
    assert log.rotations == len(rotations) >= 4
    return path


def test_rotation_keeps_one_chain_across_files(rotated: Path) -> None:
    files = audit_set(rotated)
    assert files[-1] == rotated and len(files) == len(rotated_files(rotated)) + 1
    assert [p.name for p in files[:2]] == ["audit.jsonl.000001", "audit.jsonl.000002"]
    for f in files[:-1]:
        assert f.stat().st_size <= 1024
    # The first record of each file names the hash of the last record of the file before it.
    prev = GENESIS
    for f in files:
        recs = lines(f)
        assert orjson.loads(recs[0])["prev"] == prev
        prev = hashlib.sha256(recs[-1]).hexdigest()
    result = verify_chain(files, start=GENESIS)
    assert result.ok and result.records == 40, result.message
    assert result.head == prev
    assert [orjson.loads(r)["decision_id"] for f in files for r in lines(f)] == [f"d-{i}" for i in range(40)]


def test_cli_verifies_a_rotated_set_from_its_active_file(rotated: Path) -> None:
    r = verify_cli(rotated, "--genesis")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "40 records, chain intact from the first record ever written" in r.stdout
    # A shell glob lists the active file first; verify puts the set in chain order itself.
    r = verify_cli(*sorted(rotated.parent.glob("audit.jsonl*")))
    assert r.returncode == 0 and "40 records" in r.stdout, r.stdout
    assert chain_order(sorted(rotated.parent.glob("audit.jsonl*"))) == audit_set(rotated)


def test_restart_continues_the_chain_even_when_the_active_file_is_gone(rotated: Path) -> None:
    # A crash between the rename of a rotation and the first record of the new file leaves no active file.
    last_rotated = rotated_files(rotated)[-1][1]
    rotated.unlink()
    log = AuditLog(rotated, max_file_bytes=1024)
    write(log, 3, start=100)
    log.close()
    result = verify_chain(audit_set(rotated), start=GENESIS)
    assert result.ok, result.message
    first_new = orjson.loads(lines(rotated)[0])
    assert first_new["prev"] == hashlib.sha256(lines(last_rotated)[-1]).hexdigest()


def test_keep_files_deletes_the_oldest_and_the_rest_still_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_file_bytes=1024, keep_files=2)
    write(log, 40)
    log.close()
    assert [seq for seq, _ in rotated_files(path)] == [log.rotations - 1, log.rotations]
    result = verify_chain(audit_set(path))
    assert result.ok and result.start != GENESIS, result.message
    assert "continuing from" in result.message
    # ... but not as a chain from the beginning: the first records are gone.
    r = verify_cli(path, "--genesis")
    assert r.returncode == 1 and "audit.jsonl.0000" in r.stdout and ":1: chain broken" in r.stdout, r.stdout


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder", "insert"])
def test_tampering_inside_a_file_is_found_at_the_first_broken_link(rotated: Path, tamper: str) -> None:
    victim = rotated_files(rotated)[1][1]
    recs = lines(victim)
    assert len(recs) >= 4
    if tamper == "edit":
        rec = orjson.loads(recs[2])
        rec["allow"] = not rec["allow"]
        recs[2] = orjson.dumps(rec)
        broken = 4  # the edited line still links back; the record after it no longer links to it
    elif tamper == "delete":
        del recs[2]
        broken = 3
    elif tamper == "reorder":
        recs[2], recs[3] = recs[3], recs[2]
        broken = 3
    else:
        forged = orjson.loads(recs[2])
        forged["decision_id"] = "forged"
        recs.insert(2, orjson.dumps(forged))  # a copy of a record's link, with other content
        broken = 4
    victim.write_bytes(b"\n".join(recs) + b"\n")
    r = verify_cli(rotated)
    assert r.returncode == 1, r.stdout
    assert f"{victim}:{broken}: chain broken" in r.stdout, r.stdout


def test_a_deleted_rotated_file_breaks_the_chain_at_the_next_file(rotated: Path) -> None:
    files = audit_set(rotated)
    files[2].unlink()
    r = verify_cli(rotated)
    assert r.returncode == 1
    assert f"{files[3]}:1: chain broken" in r.stdout, r.stdout


def test_a_cut_off_tail_is_found_against_a_head_kept_elsewhere(rotated: Path) -> None:
    head = verify_chain(audit_set(rotated)).head
    assert head is not None
    assert verify_cli(rotated, "--head", head).returncode == 0
    recs = lines(rotated)
    rotated.write_bytes(b"\n".join(recs[:-2]) + b"\n")
    assert verify_cli(rotated).returncode == 0  # a chain alone cannot see a missing tail...
    r = verify_cli(rotated, "--head", head)  # ...its head, kept elsewhere, can
    assert r.returncode == 1 and "records after it are missing" in r.stdout, r.stdout


def test_a_record_torn_by_a_crash_is_reported_and_the_chain_links_over_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    write(log, 3)
    log.close()
    with path.open("ab") as f:
        f.write(b'{"type":"decision","decision_id":"torn","pre')  # the crash cut the write short
    assert verify_chain([path]).ok  # a torn last line is not tampering
    log = AuditLog(path)  # the restarted gateway terminates the line and links over it
    write(log, 2, start=10)
    log.close()
    result = verify_chain([path], start=GENESIS)
    assert result.ok and result.records == 5, result.message
    assert result.torn == [f"{path}:4"]
    r = verify_cli(path)
    assert r.returncode == 0 and "1 torn by a crash" in r.stdout
    # Garbage that the next record does not link to is not a torn record: it is reported.
    recs = lines(path)
    recs.insert(1, b"not json at all")
    path.write_bytes(b"\n".join(recs) + b"\n")
    r = verify_cli(path)
    assert r.returncode == 1 and f"{path}:2: not an audit record" in r.stdout, r.stdout


def test_a_file_that_is_no_audit_log_does_not_verify(tmp_path: Path) -> None:
    """A torn record is the start of a record: one line of something else is not passed off as one."""
    other = tmp_path / "notes.txt"
    other.write_bytes(b"\xff\xfe some other file\n")
    r = verify_cli(other)
    assert r.returncode == 1 and f"{other}:1: not an audit record" in r.stdout, r.stdout
    unreadable = verify_chain([tmp_path])  # a directory among the files: an answer, not a traceback
    assert not unreadable.ok and unreadable.message == f"{tmp_path}: cannot read: Is a directory"


def test_fsync_mode_writes_the_same_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=True, max_file_bytes=2048)
    write(log, 20)
    log.close()
    assert verify_chain(audit_set(path), start=GENESIS).records == 20
    with pytest.raises(OSError):
        log.append({"type": "decision"})  # a closed log refuses: the caller must not forward the call


def test_decision_ids_are_random_version_4_uuids_and_a_fork_does_not_repeat_them() -> None:
    import os
    import uuid

    from gateway.audit import new_decision_id

    ids = [new_decision_id() for _ in range(1000)]  # several pools' worth of randomness
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text
    new_decision_id()  # the pool is partly used: a child must not take the same ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, new_decision_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    os.close(write)
    assert child not in ids and child != new_decision_id()
