#!/usr/bin/env python3
"""What observability costs per call: the same allowed tools/call through gateways that differ only in it.

    baseline   call log lines off ([logging] calls = false), no tracing, audit without fsync
    json-logs  a JSON log line per call (the default is one line per call, in text)
    tracing    JSON logs and OpenTelemetry spans exported over OTLP/HTTP to a local sink
    fsync      baseline plus [audit] fsync = true (every record on disk before the call goes on)

Sequential calls, interleaved across the gateways call by call so machine noise hits every variant alike;
prints p50 and p99 per variant and the difference to the baseline. End to end, the SDK client's own cost and
the machine's noise can hide differences of a few tens of microseconds, so the pieces are also timed in-process
(``--micro``): an audit append with and without fsync, a call's JSON log line, a call's four spans.

    python scripts/bench_observability.py [--calls 400] [--micro]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import ECHO, KEYS, default_config, free_port, mcp_client, start_gateway, stdio_upstream  # noqa: E402


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def _per_op_us(fn: Any, n: int) -> float:
    for _ in range(min(n, 200)):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def micro() -> None:
    import io
    import logging

    import orjson

    from gateway import logs
    from gateway.audit import AuditLog
    from gateway.config import LoggingConfig

    record = {
        "type": "decision",
        "decision_id": "6f1c2b1e-8d1a-4a57-9a53-2f8a1c0d9e11",
        "agent": "ci-bot",
        "input": {
            "agent": {"id": "ci-bot", "roles": ["ci"]},
            "arguments": {"digest": "ab" * 32, "keys": ["text"]},
            "session": {"id": "0" * 32},
            "request": {"id": 7, "time_ns": time.time_ns()},
        },
        "result": {"allow": True, "reasons": []},
        "bundles": {"gateway": {"revision": "32c8d3497e6e0d0b"}},
        "pad": "x" * 600,
    }
    with tempfile.TemporaryDirectory(dir=REPO) as d:
        plain = AuditLog(Path(d) / "a.jsonl")
        synced = AuditLog(Path(d) / "b.jsonl", fsync=True)
        print(
            f"audit append (~{len(orjson.dumps(record))} B record):  "
            f"{_per_op_us(lambda: plain.append(dict(record)), 20000):7.1f} us   "
            f"with fsync: {_per_op_us(lambda: synced.append(dict(record)), 300):7.1f} us  (filesystem of {REPO})"
        )
        plain.close()
        synced.close()
    buffer = io.StringIO()
    logs.setup(LoggingConfig(format="json"), stream=buffer)
    call_log = logging.getLogger(logs.CALL_LOGGER)
    logs.bind("6f1c2b1e-8d1a-4a57-9a53-2f8a1c0d9e11")

    def line() -> None:
        call_log.info(
            "%s %s by %s: %s in %.2f ms",
            "tools/call",
            "echo__echo",
            "ci-bot",
            "ok",
            1.234,
            extra={"agent": "ci-bot", "action": "tools/call", "outcome": "ok", "duration_ms": 1.234},
        )
        buffer.seek(0)
        buffer.truncate()

    print(f"call log line (json):                {_per_op_us(line, 20000):7.1f} us")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Null(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Null()))
    tracer = provider.get_tracer("bench")

    def spans() -> None:
        with tracer.start_as_current_span("call") as sp:
            sp.set_attributes({"gateway.decision_id": "x", "gateway.agent": "ci-bot", "gateway.decision": "allow"})
            for name in ("auth", "policy.decision", "forward echo"):
                with tracer.start_as_current_span(name):
                    pass

    print(f"call span + 3 children (sdk, batch): {_per_op_us(spans, 5000):7.1f} us")
    provider.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--micro", action="store_true", help="time the pieces in-process only")
    args = ap.parse_args()
    if args.micro:
        micro()
        return
    sink = ThreadingHTTPServer(("127.0.0.1", free_port()), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    variants = {
        "baseline": "[logging]\ncalls = false\n",
        "json-logs": '[logging]\nformat = "json"\n',
        "tracing": f'[logging]\nformat = "json"\n[tracing]\nexporter = "otlp"\n'
        f'endpoint = "http://127.0.0.1:{sink.server_address[1]}/v1/traces"\n',
        "fsync": "[logging]\ncalls = false\n",
    }
    root = Path(tempfile.mkdtemp(prefix="bench-obs-"))
    gateways = {}
    try:
        for name, extra in variants.items():
            port = free_port()
            text = default_config(port, root / name, stdio_upstream("echo", ECHO), extra=extra)
            if name == "fsync":
                text = text.replace("[audit]\n", "[audit]\nfsync = true\n")
            gateways[name] = start_gateway(root / name, text, port)

        async def run() -> dict[str, list[float]]:
            out: dict[str, list[float]] = {name: [] for name in gateways}
            async with anyio.create_task_group():
                clients = {}
                from contextlib import AsyncExitStack

                async with AsyncExitStack() as stack:
                    for name, gw in gateways.items():
                        clients[name] = await stack.enter_async_context(mcp_client(gw.url, KEYS["ci-bot"][2]))
                    for _ in range(20):  # warm-up
                        for c in clients.values():
                            await c.call_tool("echo__echo", {"text": "warm"})
                    for i in range(args.calls):
                        for name, c in clients.items():
                            t0 = time.perf_counter()
                            r = await c.call_tool("echo__echo", {"text": f"call {i}"})
                            out[name].append(time.perf_counter() - t0)
                            assert not r.is_error
            return out

        results = anyio.run(run)
    finally:
        for gw in gateways.values():
            gw.stop()
        sink.shutdown()
    base = statistics.median(results["baseline"]) * 1000
    print(f"{'variant':<10} {'p50 ms':>8} {'p99 ms':>8} {'p50 - baseline':>15}   ({args.calls} calls each)")
    for name, values in results.items():
        p50 = statistics.median(values) * 1000
        print(f"{name:<10} {p50:8.3f} {pct(values, 0.99):8.3f} {p50 - base:+14.3f}")


if __name__ == "__main__":
    main()
