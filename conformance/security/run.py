"""The security suite: the gateway's own adversarial attempts, grouped by class, each with its positive control.

Every attempt drives the real gateway process (started once per class with its own config and fixture
upstreams) through the real MCP SDK client, or raw HTTP and raw sockets where the SDK would refuse to send. An
attempt passes when the promise held AND its positive control (the same set-up doing the allowed thing) worked;
a broken set-up fails as "proves nothing", a missing feature as "not yet". Prints one line per attempt and ends
with ``N passed, M failed``; exits non-zero when any attempt failed. docs/security.md says what each class tests.

Usage: conformance/run security [--class protocol,hidden,...] [--only ID,ID] [--keep] [--list]
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import anyio  # noqa: E402

from conformance.security.framework import REGISTRY, Attempt, Breach, NotYet, Row, Vacuous, stop_shared  # noqa: E402

CLASSES = ["protocol", "hidden", "arguments", "engine", "identity", "audit", "abuse", "upstream", "containment"]
"""Class name -> module conformance/security/cls_<name>.py, run in this order."""
TIMEOUT_S = 120


async def run_one(a: Attempt, ctx: object) -> Row:
    t0 = time.monotonic()
    try:
        try:
            with anyio.fail_after(TIMEOUT_S):
                seen = await a.fn(ctx)
        except BaseExceptionGroup as group:  # a task group's failure: judge its first own exception
            first: BaseException = group
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        passed, text = True, seen or "held"
    except Breach as exc:
        passed, text = False, f"BREACH: {exc}"
    except Vacuous as exc:
        passed, text = False, f"PROVES NOTHING: {exc}"
    except NotYet as exc:
        passed, text = False, f"NOT YET: {exc}"
    except TimeoutError:
        passed, text = False, f"TIMED OUT after {TIMEOUT_S}s"
    except Exception as exc:  # an attempt that crashed proves nothing either way: a failure
        tb = traceback.format_exc(limit=3).strip().splitlines()
        passed, text = False, f"ERROR: {type(exc).__name__}: {exc} [{tb[-3] if len(tb) > 2 else ''}]"
    row = Row(a.cls, a.id, a.title, passed, " ".join(text.split())[:240], time.monotonic() - t0)
    print(f"  {'pass' if passed else 'FAIL'}  {a.id:28} {row.seconds:5.1f}s  {row.seen}", flush=True)
    return row


async def run_class(attempts: list[Attempt], ctx: object) -> list[Row]:
    return [await run_one(a, ctx) for a in attempts]


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--class", dest="classes", default="", help="comma-separated classes (default: all)")
    ap.add_argument("--only", default="", help="comma-separated attempt ids")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--list", action="store_true", help="list the attempts and exit")
    args = ap.parse_args()
    classes = [c for c in args.classes.split(",") if c] or CLASSES
    modules = {c: importlib.import_module(f"conformance.security.cls_{c}") for c in classes}
    only = {i for i in args.only.split(",") if i}
    if args.list:
        for a in REGISTRY:
            if a.cls in classes:
                print(f"{a.cls:12} {a.id:28} {a.title}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="security-suite.", dir="/tmp"))
    work.chmod(0o711)  # contained workers (their own uids) must traverse it to reach their workspaces
    rows: list[Row] = []
    t_start = time.monotonic()
    chosen = {c: [a for a in REGISTRY if a.cls == c and (not only or a.id in only)] for c in classes}
    chosen = {c: a for c, a in chosen.items() if a}
    contexts: dict[str, object] = {}
    failures: dict[str, str] = {}
    threads: dict[str, threading.Thread] = {}

    def boot(c: str) -> None:
        try:
            contexts[c] = modules[c].start(work / c)
        except Exception as exc:  # a class that cannot start fails every one of its attempts
            failures[c] = " ".join(f"{type(exc).__name__}: {exc}".split())[:240]

    try:
        # Every class's gateways start at once, in the background (each takes seconds to import); a class runs as
        # soon as its own are ready.
        threads.update({c: threading.Thread(target=boot, args=(c,), daemon=True) for c in chosen})
        for t in threads.values():
            t.start()
        for c, attempts in chosen.items():
            threads[c].join()
            print(f"[{c}] {len(attempts)} attempts (t = {time.monotonic() - t_start:.0f}s)", flush=True)
            if c in failures:
                for a in attempts:
                    rows.append(Row(a.cls, a.id, a.title, False, f"CLASS SET-UP FAILED: {failures[c]}", 0.0))
                print(f"  class set-up failed: {failures[c]}", flush=True)
                continue
            ctx = contexts.pop(c)
            try:
                rows += anyio.run(run_class, attempts, ctx)
            finally:
                ctx.stop()  # type: ignore[attr-defined]
    finally:
        for t in threads.values():
            t.join()
        for ctx in contexts.values():
            ctx.stop()  # type: ignore[attr-defined]
        stop_shared()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
    print()
    print(f"{'class':12} {'attempt':28} result")
    for r in rows:
        print(f"{r.cls:12} {r.id:28} {'pass' if r.passed else 'FAIL'}  {r.title}")
    print(f"\nran in {time.monotonic() - t_start:.0f}s")
    passed = sum(r.passed for r in rows)
    failed = len(rows) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and rows else 1


if __name__ == "__main__":
    sys.exit(main())
