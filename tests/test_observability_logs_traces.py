"""Logs, audit and traces join up on the decision id: a gateway with JSON logs and OTLP tracing, real calls
through the SDK client, spans received by an OTLP/HTTP endpoint of the test's own (the real exporter).
"""

from __future__ import annotations

import gzip
import io
import logging
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import orjson
import pytest
from mcp.shared.exceptions import MCPError

from gateway import logs
from gateway.config import LoggingConfig
from gateway.decide import digest
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

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    status: int
    attributes: dict[str, Any] = field(default_factory=dict)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


class OtlpReceiver:
    """An OTLP/HTTP trace endpoint: decodes ExportTraceServiceRequest protobufs into Span records."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans: list[Span] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                encoding = self.headers.get("content-encoding", "")
                if encoding == "gzip":
                    body = gzip.GzipFile(fileobj=io.BytesIO(body)).read()
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                receiver.headers.append(dict(self.headers))
                for rs in req.resource_spans:
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            receiver.spans.append(
                                Span(
                                    s.name,
                                    s.trace_id.hex(),
                                    s.span_id.hex(),
                                    s.parent_span_id.hex(),
                                    s.kind,
                                    s.status.code,
                                    {a.key: _value(a.value) for a in s.attributes},
                                )
                            )
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Scenario:
    gw: RunningGateway
    otlp: OtlpReceiver
    records: list[dict[str, Any]]
    log_lines: list[str]

    def decision(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        found = [
            r
            for r in self.records
            if r["type"] == "decision"
            and r["action"] == "tools/call"
            and r["tool"] == tool
            and r["arguments_digest"] == digest(args)
        ]
        assert len(found) == 1, (tool, args, found)
        return found[0]

    def call_span(self, decision_id: str) -> Span:
        found = [s for s in self.otlp.spans if s.attributes.get("gateway.decision_id") == decision_id]
        assert len(found) == 1, f"one call span per decision, got {found}"
        return found[0]

    def children(self, span: Span) -> dict[str, Span]:
        return {s.name: s for s in self.otlp.spans if s.parent_id == span.span_id and s.trace_id == span.trace_id}


ALLOWED = {"text": "payload-that-stays-out-of-logs"}
DENIED = {"path": "/srv/data"}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    workdir = tmp_path_factory.mktemp("joined")
    otlp = OtlpReceiver()
    port = free_port()
    extra = f"""
[logging]
format = "json"

[tracing]
exporter = "otlp"
endpoint = "http://127.0.0.1:{otlp.port}/v1/traces"
headers = {{ "x-collector-token" = "${{OBS_TEST_COLLECTOR_TOKEN}}" }}
service_name = "gateway-under-test"
"""
    config = default_config(port, workdir, stdio_upstream("echo", ECHO), extra=extra)
    gw = start_gateway(workdir, config, port, env={"OBS_TEST_COLLECTOR_TOKEN": "tok-123"})

    async def calls() -> None:
        async with mcp_client(gw.url, KEYS["ci-bot"][2], headers={"traceparent": TRACEPARENT}) as c:
            assert not (await c.call_tool("echo__echo", ALLOWED)).is_error
            assert (await c.call_tool("echo__delete_everything", DENIED)).is_error
            with pytest.raises(MCPError):
                await c.call_tool("echo__crash", {})
        with pytest.raises(Exception):  # noqa: B017 - a 401, however the SDK client surfaces it
            async with mcp_client(gw.url, "not-a-key") as c:
                await c.list_tools()

    try:
        anyio.run(calls)
    finally:
        gw.stop()  # a clean stop flushes the spans still queued
    try:
        yield Scenario(gw, otlp, gw.audit_records(), gw.log.read_text().splitlines())
    finally:
        otlp.close()


def test_every_log_line_is_json_and_every_call_line_names_its_decision(scenario: Scenario) -> None:
    assert scenario.log_lines
    parsed = []
    for line in scenario.log_lines:
        doc = orjson.loads(line)  # every line, uvicorn's and the SDK's included
        assert {"ts", "level", "logger", "msg"} <= doc.keys(), doc
        parsed.append(doc)
    decision_ids = {r["decision_id"] for r in scenario.records if r["type"] == "decision"}
    call_lines = [d for d in parsed if d["logger"] == logs.CALL_LOGGER]
    assert call_lines
    for doc in call_lines:
        assert doc.get("decision_id") in decision_ids, doc
    # Each tools/call decision on record has its log lines, under the same id.
    for rec in scenario.records:
        if rec["type"] == "decision" and rec["action"] == "tools/call":
            assert any(d.get("decision_id") == rec["decision_id"] for d in parsed), rec["decision_id"]
    crash = scenario.decision("crash", {})
    failed = [d for d in parsed if d.get("decision_id") == crash["decision_id"] and d["level"] == "warning"]
    assert failed and failed[0]["outcome"] == "upstream_error"
    denied = scenario.decision("delete_everything", DENIED)
    assert any(
        d.get("decision_id") == denied["decision_id"] and "destructive tools need the admin role" in d["msg"]
        for d in parsed
    )
    # No secrets in logs: neither the key nor the argument values.
    text = "\n".join(scenario.log_lines)
    assert KEYS["ci-bot"][2] not in text and ALLOWED["text"] not in text and "tok-123" not in text


def test_a_call_is_one_span_with_auth_decision_and_forward_as_children(scenario: Scenario) -> None:
    rec = scenario.decision("echo", ALLOWED)
    span = scenario.call_span(rec["decision_id"])
    assert span.name == "tools/call echo__echo"
    assert span.kind == 2  # SERVER
    assert span.attributes["gateway.agent"] == "ci-bot"
    assert span.attributes["gateway.decision"] == "allow"
    assert span.attributes["gen_ai.tool.name"] == "echo__echo"
    assert span.attributes["gateway.policy.revision"] == rec["bundles"]["gateway"]["revision"]
    # The trace the client started (W3C traceparent header) continues through the gateway.
    assert span.trace_id == TRACE_ID and span.parent_id == PARENT_ID
    kids = scenario.children(span)
    assert {"auth", "policy.decision", "forward echo"} <= kids.keys(), kids.keys()
    assert kids["auth"].attributes == {"gateway.auth.method": "api_key", "gateway.agent": "ci-bot"}
    assert kids["forward echo"].kind == 3  # CLIENT
    assert kids["forward echo"].status != 2  # not ERROR
    # The SDK's own server span is replaced by the gateway's: no second span for the call.
    assert [s for s in scenario.otlp.spans if s.name == "tools/call echo__echo"] == [span]


def test_denied_and_failed_calls_are_traced_too(scenario: Scenario) -> None:
    denied = scenario.call_span(scenario.decision("delete_everything", DENIED)["decision_id"])
    assert denied.attributes["gateway.decision"] == "deny"
    assert denied.attributes["gateway.deny_reasons"] == ["destructive tools need the admin role"]
    assert set(scenario.children(denied)) == {"auth", "policy.decision"}  # never forwarded
    crashed = scenario.call_span(scenario.decision("crash", {})["decision_id"])
    assert scenario.children(crashed)["forward echo"].status == 2  # ERROR: the upstream died mid-call
    assert crashed.status == 2 and crashed.attributes["gateway.outcome"] == "upstream_error"
    # Only requests that carry a call are traced: no auth span without its call span.
    ids = {s.span_id for s in scenario.otlp.spans}
    assert all(s.parent_id in ids or s.parent_id == PARENT_ID for s in scenario.otlp.spans if s.name == "auth")
    refused = [s for s in scenario.otlp.spans if s.name == "auth" and s.attributes.get("gateway.auth.failure")]
    assert [s.attributes["gateway.auth.failure"] for s in refused] == ["bad_key"]
    parent = [s for s in scenario.otlp.spans if s.span_id == refused[0].parent_id]
    assert parent and parent[0].attributes["http.response.status_code"] == 401 and parent[0].status == 2


def test_exporter_sends_the_configured_headers_and_service_name(scenario: Scenario) -> None:
    assert scenario.otlp.headers
    assert all(h.get("x-collector-token") == "tok-123" for h in scenario.otlp.headers)


def test_text_format_appends_the_decision_id_and_json_format_carries_extras() -> None:
    stream = io.StringIO()
    handler = logs.setup(LoggingConfig(format="text"), stream=stream)
    try:
        log = logging.getLogger("gateway.test")
        log.info("outside a call")

        async def in_a_call() -> None:
            logs.bind("d-123")
            log.info("inside a call")

        anyio.run(in_a_call)
        log.info("outside again")  # the binding stayed in the call's own context
        lines = stream.getvalue().splitlines()
        assert lines[0].endswith("gateway.test: outside a call")
        assert lines[1].endswith("gateway.test: inside a call decision_id=d-123")
        assert lines[2].endswith("outside again")
        handler.setFormatter(logs.JsonFormatter())
        log.warning("json %s", "line", extra={"outcome": "ok", "decision_id": "d-9"})
        doc = orjson.loads(stream.getvalue().splitlines()[-1])
        assert doc["msg"] == "json line" and doc["level"] == "warning"
        assert doc["decision_id"] == "d-9" and doc["outcome"] == "ok"
    finally:
        logging.getLogger().removeHandler(handler)


def test_a_collector_url_with_credentials_is_logged_without_them() -> None:
    from gateway.tracing import redact_url

    assert redact_url("https://svc:s3cret@otel.example:4318/v1/traces") == "https://***@otel.example:4318/v1/traces"
    assert redact_url("http://token@otel.example/v1/traces") == "http://***@otel.example/v1/traces"
    assert redact_url("http://127.0.0.1:4318/v1/traces") == "http://127.0.0.1:4318/v1/traces"
