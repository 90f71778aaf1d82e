"""conformance/run policy: the same decision vectors on every policy engine available here; all must agree.

Suites (each a policy with its vectors as table tests, input -> expected decision):
- ``shipped``: the shipped policy set (rego/) and its tables;
- ``subset``: conformance/policy/subset/, one vector per construct of the Rego subset docs/policy.md promises.

Engines:
- ``embedded``: rego-cpp in process, as the gateway's default engine runs it;
- ``opa/standin-rego-cpp``: the gateway's OPA engine over the Data API, against our stand-in server (rego-cpp);
- ``opa/standin-opa-go``: the same, the stand-in evaluating with OPA's own Go evaluator (opa-golib-python-bindings,
  when installed): real OPA semantics;
- ``opa/real``: a real OPA, when OPA_URL is set (the policy is uploaded to it) or ``opa`` is on PATH.

A vector passes on an engine when the decision matches its expectation and equals the embedded engine's whole
decision (allow, reasons, result). Prints a line per suite and engine, the failures, and ``N passed, M failed``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

import anyio  # noqa: E402
import httpx2  # noqa: E402

from gateway.config import PolicyConfig  # noqa: E402
from gateway.policy.decision import Decision, PolicyError  # noqa: E402
from gateway.policy.engines import LOCAL_ENGINES, compile_policy  # noqa: E402
from gateway.policy.loader import load_policy  # noqa: E402
from gateway.policy.opa import OpaEngine  # noqa: E402
from gateway.policy.tables import Case, check, load_tables  # noqa: E402

SUITES = {"shipped": REPO / "rego", "subset": HERE / "subset"}
STANDIN = HERE / "opa_standin.py"
Decide = Callable[[dict[str, Any]], Awaitable[Decision]]
Close = Callable[[], Awaitable[None]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_health(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if httpx2.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def _process(argv: list[str], port: int) -> Iterator[str]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_health(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def _standin(policy: Path, backend: str) -> Iterator[str]:
    port = _free_port()
    with _process(
        [sys.executable, str(STANDIN), "--policy", str(policy), "--port", str(port), "--backend", backend], port
    ) as url:
        yield url


@contextmanager
def _real_opa(policy: Path) -> Iterator[str]:
    url = os.environ.get("OPA_URL")
    if url:
        source = load_policy(policy)
        ids = [f"mcp-gateway-conformance/{name}" for name in source.modules]
        for pid, text in zip(ids, source.modules.values(), strict=True):
            httpx2.put(f"{url}/v1/policies/{pid}", content=text.encode()).raise_for_status()
        httpx2.put(f"{url}/v1/data", json=source.data).raise_for_status()
        try:
            yield url
        finally:
            for pid in ids:
                httpx2.delete(f"{url}/v1/policies/{pid}")
        return
    binary = shutil.which("opa")
    assert binary is not None
    port = _free_port()
    with _process(
        [
            binary,
            "run",
            "--server",
            "--addr",
            f"127.0.0.1:{port}",
            "--bundle",
            str(policy),
            "--ignore",
            "*_test.yaml",
            "--ignore",
            "*_test.yml",
            "--ignore",
            "*_test.json",
        ],
        port,
    ) as u:
        yield u


def engines() -> tuple[list[str], list[str]]:
    """Engines to run, and the ones left out with the reason."""
    names = [*LOCAL_ENGINES, "opa/standin-rego-cpp"]
    skipped = []
    if importlib.util.find_spec("opa_bindings") is not None:
        names.append("opa/standin-opa-go")
    else:
        skipped.append("opa/standin-opa-go: pip install --ignore-requires-python opa-golib-python-bindings")
    if os.environ.get("OPA_URL") or shutil.which("opa"):
        names.append("opa/real")
    else:
        skipped.append("opa/real: set OPA_URL or put the opa binary on PATH")
    return names, skipped


async def _nothing() -> None:
    return None


@contextmanager
def _decider(engine: str, policy: Path) -> Iterator[tuple[Decide, Close]]:
    if engine in LOCAL_ENGINES:
        compiled = compile_policy(policy, "gateway/decision", engine)

        async def embedded(inp: dict[str, Any]) -> Decision:
            return compiled.evaluate_input(inp)  # type: ignore[no-any-return]

        yield embedded, _nothing
        return
    if engine == "opa/real":
        ctx = _real_opa(policy)
    else:
        ctx = _standin(policy, "opa-go" if engine.endswith("opa-go") else "regopy")
    with ctx as url:
        opa = OpaEngine(PolicyConfig(engine="opa", opa_url=url, timeout_ms=10000))
        yield opa.decide, opa.aclose


def _doc(d: Decision) -> tuple[bool, tuple[str, ...], Any, str | None]:
    return d.allow, d.reasons, d.result, d.error


async def _run_suite(cases: list[Case], decide: Decide, close: Close) -> list[Decision]:
    try:
        return [await decide(c.input) for c in cases]
    finally:
        await close()


def main() -> int:
    ap = argparse.ArgumentParser(description="Policy decision vectors on every available engine.")
    ap.add_argument("--suite", choices=sorted(SUITES), action="append", help="only these suites")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every vector")
    args = ap.parse_args()
    names, skipped = engines()
    for s in skipped:
        print(f"engine skipped: {s}")
    passed = failed = 0
    for suite in args.suite or list(SUITES):
        policy = SUITES[suite]
        cases = load_tables(load_policy(policy))
        if not cases:  # a suite that lost its vectors must not pass by having nothing to check
            failed += 1
            print(f"FAIL [{suite}] no vectors found in {policy}")
            continue
        reference: list[Decision] | None = None
        for engine in names:
            try:
                with _decider(engine, policy) as (decide, close):
                    decisions = anyio.run(_run_suite, cases, decide, close)
            except PolicyError as exc:  # refused at load (an engine's documented gap): never mis-evaluated
                failed += suite == "shipped"  # the shipped policy must load on every engine
                print(f"{suite} on {engine}: refused at load: {exc.errors[0]}")
                continue
            if reference is None:
                reference = decisions
            ok = 0
            for case, decision, ref in zip(cases, decisions, reference, strict=True):
                result = check(case, decision)
                problems = list(result.problems)
                if _doc(decision) != _doc(ref):
                    problems.append(f"differs from embedded: {_doc(decision)} vs {_doc(ref)}")
                if problems:
                    failed += 1
                    print(f"FAIL [{suite} on {engine}] {case.name}: {'; '.join(problems)}")
                    for line in result.diff.splitlines():
                        print("    " + line)
                else:
                    ok += 1
                    passed += 1
                    if args.verbose:
                        print(f"PASS [{suite} on {engine}] {case.name}")
            print(f"{suite} on {engine}: {ok}/{len(cases)} vectors")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
