"""Decision time of the shipped policies on each local engine, for a ~1 KB input.

Measures, in one process, interleaved in rounds so machine noise hits every variant alike:
- ``engine: ...``: the same ``sh__run`` call decided by each local engine, side by side: regorus's RVM (the
  embedded default), regorus's interpreter (``engine = "regorus"``), regopy (rego-cpp, ``engine = "regopy"``);
  then the RVM through ``RvmEngine.decide`` (inline on the event loop, as the gateway runs it) and through a hop
  to a worker thread and back (what evaluating on threads would add: regorus holds the GIL, so threads buy no
  parallelism);
- ``tools/list of N``: the visibility of N tools through ``Decider.visible_many`` (one batch into the RVM), with
  the cache emptied first, and answered from the cache;
The regopy variants below:
- ``sh__run call``: one decision through the compiled policy on this thread's evaluator (what the gateway's
  worker thread does: serialise the input, hand it to rego-cpp, evaluate, read the result), for the shell tool,
  the policy's most expensive path (command allow-list, shell operators, cwd, timeout, containment);
- ``time__convert_time call``: the same for a call with a small argument check;
- ``decide (gateway path)``: the same through ``EmbeddedEngine.decide`` (the hop to a worker thread included);
- ``list item``: a tools/list visibility decision (small input, no arguments);
- ``whole input``: the same decision with the whole input handed to rego-cpp (the engine normally hands it only
  the fields the policy reads);
- ``trivial policy``: the whole ~1 KB input through a policy that allows everything: the input's own cost;
- ``16 KB argument``: a call whose argument string is 16 KB (the policy sees every argument whole);
- ``bounds check``: the gateway's check that the arguments are within what the policy can see (before the engine).
Prints p50 and p99 per variant, the compile time, and the share of a decision spent on the input.

    python bench/policy_bench.py [--decisions 3000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.decide import Decider, Request  # noqa: E402
from gateway.identity import Agent  # noqa: E402
from gateway.metrics import Metrics  # noqa: E402
from gateway.policy.bounds import Limits  # noqa: E402
from gateway.policy.embedded import CompiledPolicy, EmbeddedEngine, compile_policy, new_evaluator  # noqa: E402
from gateway.policy.loader import PolicySource  # noqa: E402
from gateway.policy.rvm import RvmEngine, compile_rvm  # noqa: E402


def call_input(decider: Decider, command: str) -> dict[str, Any]:
    """A realistic ~1 KB tools/call input, built by the gateway's own Decider."""
    req = Request(
        agent=Agent("ci-bot", "platform", ("ci",), "api_key"),
        action="tools/call",
        view=None,
        name="sh__run",
        arguments={"command": command, "cwd": "build", "timeout_s": 60, "stdin": "x" * 400},
        session_id="5f0c2d1e9a8b4c7d8e9f0a1b2c3d4e5f",
        client={"name": "claude-code", "version": "2.1.7", "title": "Claude Code"},
        protocol_version="2025-11-25",
        request_id=17,
        remote_addr="127.0.0.1",
    )
    annotations = {
        "title": "Run a shell command",
        "readOnlyHint": False,
        "destructiveHint": False,
        "openWorldHint": False,
    }
    return decider.build_input(req, "sh", tool="run", annotations=annotations, arguments=req.arguments)


def time_input(decider: Decider) -> dict[str, Any]:
    req = Request(
        agent=Agent("ci-bot", "platform", ("ci",), "api_key"),
        action="tools/call",
        view=None,
        name="time__convert_time",
        arguments={"source_timezone": "Europe/Paris", "time": "16:30", "target_timezone": "Asia/Tokyo"},
        session_id="5f0c2d1e9a8b4c7d8e9f0a1b2c3d4e5f",
        client={"name": "claude-code", "version": "2.1.7"},
        protocol_version="2025-11-25",
        request_id=18,
        remote_addr="127.0.0.1",
    )
    return decider.build_input(
        req, "time", tool="convert_time", annotations={"readOnlyHint": True}, arguments=req.arguments
    )


def list_input(decider: Decider) -> dict[str, Any]:
    req = Request(agent=Agent("ci-bot", "platform", ("ci",), "api_key"), action="tools/list", view=None)
    return decider.build_input(
        req, "time", tool="get_current_time", annotations={"readOnlyHint": True}, action="tools/list"
    )


def percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2] * 1000, s[min(len(s) - 1, int(len(s) * 0.99))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=3000, help="decisions per variant")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument(
        "--cpu",
        action="store_true",
        help="time the in-thread variants in the thread's CPU time (a shared machine's scheduling left out)",
    )
    args = ap.parse_args()

    t0 = time.perf_counter()
    policy = compile_policy(REPO / "rego", "gateway/decision")
    compile_ms = (time.perf_counter() - t0) * 1000
    trivial = CompiledPolicy(
        PolicySource(
            {"t.rego": 'package gateway\n\nimport rego.v1\n\ndecision := {"allow": true, "reasons": []}\n'},
            {},
            "trivial",
            Path("trivial"),
        ),
        "gateway/decision",
    )
    trivial.input_shape = None  # measure the whole input, not the nothing this policy reads
    whole = CompiledPolicy(policy.source, "gateway/decision")
    whole.input_shape = None
    engine = EmbeddedEngine(REPO / "rego", "gateway/decision", 1000, threads=1)
    decider = Decider(engine, Metrics(), Limits())
    call = call_input(decider, "pytest -q tests/test_policy_tables.py")
    big = call_input(decider, "ls")
    big["arguments"]["stdin"] = "y" * 16384
    listing = list_input(decider)
    convert = time_input(decider)
    size = len(orjson.dumps(call))
    ev = new_evaluator()
    first = policy.decide(ev, call)
    assert first.allow and first.error is None, first
    assert policy.decide(ev, convert).allow

    async def gateway_path(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await engine.decide(call)
            out.append(time.perf_counter() - t)
        return out

    clock = time.thread_time if args.cpu else time.perf_counter

    def timed(fn: Callable[[], object], n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = clock()
            fn()
            out.append(clock() - t)
        return out

    rvm = compile_rvm(REPO / "rego", "gateway/decision")
    interp = compile_rvm(REPO / "rego", "gateway/decision", interpreter=True)
    rvm_engine = RvmEngine(REPO / "rego", "gateway/decision", 1000)
    for p in (rvm, interp):
        d = p.evaluate(call)
        assert d.allow and d.error is None, d

    async def on_loop(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await rvm_engine.decide(call)
            out.append(time.perf_counter() - t)
        return out

    async def on_thread(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await anyio.to_thread.run_sync(rvm.evaluate, call)
            out.append(time.perf_counter() - t)
        return out

    list_decider = Decider(rvm_engine, Metrics(), Limits())
    list_req = Request(agent=Agent("ci-bot", "platform", ("ci",), "api_key"), action="tools/list", view=None)
    lists = {n: [(f"tool_{i}", {"readOnlyHint": True}) for i in range(n)] for n in (1, 100)}

    async def batch(items: list[tuple[str, dict[str, Any]]], n: int, cached: bool = False) -> list[float]:
        out = []
        for _ in range(n):
            if not cached:
                list_decider._visible.clear()
            t = time.perf_counter()
            await list_decider.visible_many(list_req, "time", "tool", items)
            out.append(time.perf_counter() - t)
        return out

    variants: dict[str, Callable[[int], list[float]]] = {
        f"engine: regorus RVM (embedded), sh__run {size} B": lambda n: timed(lambda: rvm.evaluate(call), n),
        "engine: regorus interpreter (regorus)": lambda n: timed(lambda: interp.evaluate(call), n),
        "engine: regopy (rego-cpp)": lambda n: timed(lambda: policy.decide(ev, call), n),
        "RVM: RvmEngine.decide, inline on the loop": lambda n: anyio.run(on_loop, n),
        "RVM: hop to a worker thread and back": lambda n: anyio.run(on_thread, n),
        "RVM: tools/list of 1, Decider.visible_many": lambda n: anyio.run(batch, lists[1], n),
        "RVM: tools/list of 100, Decider.visible_many": lambda n: anyio.run(batch, lists[100], max(1, n // 20)),
        "RVM: tools/list of 100, cached": lambda n: anyio.run(batch, lists[100], max(1, n // 20), True),
        f"sh__run call ({size} B input)": lambda n: timed(lambda: policy.decide(ev, call), n),
        "decide (gateway path, thread hop)": lambda n: anyio.run(gateway_path, n),
        "decide, whole input handed to rego-cpp": lambda n: timed(lambda: whole.decide(ev, call), n),
        f"time__convert_time call ({len(orjson.dumps(convert))} B input)": lambda n: timed(
            lambda: policy.decide(ev, convert), n
        ),
        f"list item ({len(orjson.dumps(listing))} B input)": lambda n: timed(lambda: policy.decide(ev, listing), n),
        "trivial policy, whole input": lambda n: timed(lambda: trivial.decide(ev, call), n),
        f"16 KB argument ({len(orjson.dumps(big))} B)": lambda n: timed(lambda: policy.decide(ev, big), n),
        "bounds check, 1 KB arguments": lambda n: timed(lambda: decider.refusal(call["arguments"]), n),
        "bounds check, 16 KB arguments": lambda n: timed(lambda: decider.refusal(big["arguments"]), n),
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    per_round = max(1, args.decisions // args.rounds)
    for fn in variants.values():
        fn(50)  # warm up
    for _ in range(args.rounds):
        for k, fn in variants.items():
            samples[k].extend(fn(per_round))

    print(
        f"shipped policy {policy.revision}: compiled in {compile_ms:.0f} ms; "
        f"{per_round * args.rounds} decisions per variant"
    )
    print(f"{'variant':<52} {'p50 µs':>8} {'p99 µs':>8}")
    for k, s in samples.items():
        p50, p99 = percentiles(s)
        print(f"{k:<52} {p50 * 1000:>8.0f} {p99 * 1000:>8.0f}")
    floor = percentiles(samples["trivial policy, whole input"])[0]
    full = percentiles(samples["decide, whole input handed to rego-cpp"])[0]
    print(f"parsing the whole input (the trivial policy's p50) is {floor / full:.0%} of a decision that is handed it")


if __name__ == "__main__":
    main()
