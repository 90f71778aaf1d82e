"""Per-stage timing of a call (authenticate, parse, decide, record, forward, answer), for the benchmark.

Off unless the gateway starts with ``MCP_GATEWAY_STAGES=1`` in its environment: then each stage boundary stamps
``perf_counter_ns`` on the request being handled (a list in a context variable, set when authentication
starts), and a request that reaches ``end`` adds the time between its stamps to a per-stage sample, which the
admin listener serves at ``/debug/stages`` (``?reset=1`` empties it). Off, every hook is one global read and
``/debug/stages`` answers 404. Only stage names and durations are kept: no agent, tool or argument.

A stamp names the stage that just ended, so ``mark("decide")`` at the start of the record stage charges the
time since the previous stamp (routing, the policy input, the engine) to ``decide``; a stage marked twice in a
request (the decision and the outcome records) is summed. Samples are kept per upstream (``tag``).
"""

from __future__ import annotations

import itertools
import os
import time
from array import array
from contextvars import ContextVar

ENABLED = os.environ.get("MCP_GATEWAY_STAGES") == "1"

ORDER = ("authenticate", "parse", "decide", "record", "forward", "answer")
_MAX_SAMPLES = 200_000

_stamps: ContextVar[list[tuple[str, int]] | None] = ContextVar("gateway_stages", default=None)
_samples: dict[str, dict[str, array[int]]] = {}
"""Per label (the upstream a call went to), per stage: durations in nanoseconds, 8 bytes each (a list of ints
would hold ~36 a sample: a benchmark's tens of thousands of calls would show in the RSS it measures)."""


def begin() -> None:
    """A request starts (authentication is about to run)."""
    if ENABLED:
        _stamps.set([("", time.perf_counter_ns())])


def mark(stage: str) -> None:
    """The stage ``stage`` of the current request has just ended."""
    if ENABLED:
        stamps = _stamps.get()
        if stamps is not None:
            stamps.append((stage, time.perf_counter_ns()))


def tag(label: str) -> None:
    """Label the current request's samples (the upstream it is forwarded to)."""
    if ENABLED:
        stamps = _stamps.get()
        if stamps is not None:
            stamps[0] = (label, stamps[0][1])


def end(stage: str = "answer") -> None:
    """The current request is answered: its stage times join the samples."""
    if not ENABLED:
        return
    stamps = _stamps.get()
    if stamps is None:
        return
    stamps.append((stage, time.perf_counter_ns()))
    _stamps.set(None)
    per: dict[str, int] = {}
    for (_, before), (name, at) in itertools.pairwise(stamps):
        per[name] = per.get(name, 0) + at - before
    per["total"] = stamps[-1][1] - stamps[0][1]
    samples = _samples.setdefault(stamps[0][0] or "-", {})
    for name, ns in per.items():
        sample = samples.get(name)
        if sample is None:
            sample = samples[name] = array("q")
        if len(sample) < _MAX_SAMPLES:
            sample.append(ns)


def summary(reset: bool = False) -> dict[str, dict[str, dict[str, float]]]:
    """Per label, per stage: calls, p50, p90 and mean in microseconds (stages in call order, then ``total``)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label, samples in sorted(_samples.items()):
        names = [n for n in ORDER if n in samples] + sorted(n for n in samples if n not in ORDER and n != "total")
        if "total" in samples:
            names.append("total")
        stats = out[label] = {}
        for name in names:
            values = sorted(samples[name])
            n = len(values)
            stats[name] = {
                "calls": n,
                "p50_us": round(values[n // 2] / 1000, 1),
                "p90_us": round(values[min(n - 1, n * 9 // 10)] / 1000, 1),
                "mean_us": round(sum(values) / n / 1000, 1),
            }
    if reset:
        _samples.clear()
    return out
