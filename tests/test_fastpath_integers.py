"""An integer beyond 64 bits in a tools/call's arguments is refused alike on every path and in both eras: the fast
path's parser (orjson) reads it as a float, which it must never forward (10**20 would reach the upstream as
1e20) nor judge (the policy would see a number the agent did not send). The refusal names the reason and the
decision id, is recorded (decision allow false, outcome denied) and counted as a denial."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.conftest import RunningGateway, default_config, free_port, start_gateway, stdio_upstream
from tests.test_protocol_bad_input import headers, open_session, parse
from tests.test_resilience_upstream import RECORDER, allow_all_policy, recorded

WHY = "arguments exceed what the policy can see: arguments.v is an integer outside 64 bits"
VALUES = [str(10**20), str(2**70), str(-(10**20)), str(2**64)]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("bigint")
    port = free_port()
    upstreams = stdio_upstream("rec", RECORDER, f'env = {{ RECORD_FILE = "{workdir / "rec.jsonl"}" }}\n')
    gw = start_gateway(workdir, default_config(port, workdir, upstreams, policy=allow_all_policy(workdir)), port)
    yield gw
    gw.stop()


def denials(gw: RunningGateway) -> float:
    text = httpx2.get(gw.admin_base + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("mcp_gateway_denials_total{")
    )


def forwarded(gw: RunningGateway, marker: str) -> list[Any]:
    return [
        m["params"]["arguments"]
        for m in recorded(gw.workdir / "rec.jsonl")
        if m.get("method") == "tools/call" and (m["params"].get("arguments") or {}).get("m") == marker
    ]


def call(gw: RunningGateway, era: str, rid: int, marker: str, number: str) -> dict[str, Any]:
    args = f'{{"m": "{marker}", "v": {number}}}'
    if era == "2025":
        sid = open_session(gw)
        body = (
            f'{{"jsonrpc": "2.0", "id": {rid}, "method": "tools/call", "params": {{"name": "rec__echo", '
            f'"arguments": {args}}}}}'
        )
        h = headers("ci-bot", sid)
    else:
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        body = (
            f'{{"jsonrpc": "2.0", "id": {rid}, "method": "tools/call", "params": {{"name": "rec__echo", '
            f'"arguments": {args}, "_meta": {json.dumps(meta)}}}}}'
        )
        h = headers("ci-bot") | {
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "tools/call",
            "Mcp-Name": "rec__echo",
        }
    resp = httpx2.post(gw.url, content=body.encode(), headers=h, timeout=60)
    assert resp.status_code == 200, resp.text[:500]
    return parse(resp)


@pytest.mark.parametrize("era", ["2025", "2026"])
def test_an_integer_beyond_64_bits_is_refused_never_forwarded_as_a_float(gateway: RunningGateway, era: str) -> None:
    for rid, number in enumerate(VALUES, start=1):
        marker = f"{era}-{rid}"
        before = denials(gateway)
        answer = call(gateway, era, rid, marker, number)
        result = answer.get("result") or {}
        text = " ".join(c.get("text", "") for c in result.get("content", []))
        assert result.get("isError") is True and WHY in text and "decision id" in text, (number, answer)
        assert not forwarded(gateway, marker), number
        decision_id = text.rsplit("decision id ", 1)[1].rstrip(").")
        records = [r for r in gateway.audit_records() if r.get("decision_id") == decision_id]
        decision = [r for r in records if r["type"] == "decision"]
        assert len(decision) == 1 and decision[0]["allow"] is False and decision[0]["reasons"][0].startswith(WHY)
        assert [r["outcome"] for r in records if r["type"] == "outcome"] == ["denied"]
        assert denials(gateway) == before + 1


@pytest.mark.parametrize("era", ["2025", "2026"])
def test_numbers_within_64_bits_and_true_floats_still_pass(gateway: RunningGateway, era: str) -> None:
    for rid, (number, value) in enumerate(
        [(str(2**63 - 1), 2**63 - 1), (str(-(2**63)), -(2**63)), ("1e20", 1e20), ("100000000000000000000.0", 1e20)],
        start=10,
    ):
        marker = f"ok-{era}-{rid}"
        answer = call(gateway, era, rid, marker, number)
        assert not (answer.get("result") or {}).get("isError"), (number, answer)
        sent = forwarded(gateway, marker)
        assert len(sent) == 1 and sent[0]["v"] == value and type(sent[0]["v"]) is type(value), (number, sent)
