"""The policy decides on exactly what is forwarded: through a real gateway, over raw HTTP (the fast path and the SDK
path), every engine differential case is refused, denied or allowed as conformance/security/engine_cases.py says,
a recording upstream proves what was forwarded (nothing, or the very value the policy saw), and a refusal is
recorded (decision with allow false and its reason, then an outcome) and answered with the decision id."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from conformance.security.engine_cases import ALLOWED, DENIED, PROBE_POLICY, REFUSED, engine_differential_cases
from tests.conftest import ECHO, RunningGateway, default_config, free_port, start_gateway, stdio_upstream
from tests.test_policy_engine_differential import REGORUS_OVER_DENIALS
from tests.test_protocol_bad_input import headers, open_session, parse
from tests.test_resilience_upstream import RECORDER

CASES = engine_differential_cases()
SEE = "arguments exceed what the policy can see: "


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("arguments")
    policy = workdir / "rego"
    policy.mkdir()
    (policy / "p.rego").write_text(PROBE_POLICY)
    port = free_port()
    upstreams = stdio_upstream("rec", RECORDER, f'env = {{ RECORD_FILE = "{workdir / "rec.jsonl"}" }}\n')
    upstreams += stdio_upstream("echo", ECHO)
    gw = start_gateway(workdir, default_config(port, workdir, upstreams, policy=policy), port)
    yield gw
    gw.stop()


def json_text(value: Any) -> str:
    """JSON as an agent may spell it: escapes for every non-ASCII character, 1e400 for infinity."""
    return json.dumps(value).replace("Infinity", "1e400")


def forwarded(gw: RunningGateway, marker: str) -> list[Any]:
    """The arguments of every tools/call the recording upstream received carrying ``marker``."""
    path = gw.workdir / "rec.jsonl"
    out = []
    for line in path.read_text(encoding="utf-8", errors="surrogatepass").split("\n") if path.exists() else []:
        if not line.strip():
            continue
        msg = json.loads(line)
        if msg.get("method") == "tools/call" and (msg["params"].get("arguments") or {}).get("m") == marker:
            out.append(msg["params"]["arguments"]["v"])
    return out


def marked(marker: str, value_json: str) -> str:
    return '{"m": "' + marker + '", "v": ' + value_json + "}"


def call(gw: RunningGateway, sid: str, rid: int, arguments_json: str, sdk: bool) -> dict[str, Any]:
    meta = f', "_meta": {{"progressToken": "p{rid}"}}' if sdk else ""  # a progress token: the SDK path
    body = (
        f'{{"jsonrpc": "2.0", "id": {rid}, "method": "tools/call", '
        f'"params": {{"name": "rec__echo", "arguments": {arguments_json}{meta}}}}}'
    )
    resp = httpx2.post(gw.url, content=body.encode(), headers=headers("ci-bot", sid), timeout=60)
    assert resp.status_code in (200, 400), resp.text[:500]
    return parse(resp)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b) and type(a) is type(b)


@pytest.mark.parametrize("sdk", [False, True], ids=["fast path", "SDK path"])
def test_every_engine_case_is_decided_on_what_is_forwarded(gateway: RunningGateway, sdk: bool) -> None:
    sid = open_session(gateway)
    wrong = []
    for rid, (name, value, expected) in enumerate(CASES, start=1):
        expected = DENIED if name in REGORUS_OVER_DENIALS else expected  # the default engine is regorus
        marker = f"{'sdk' if sdk else 'fast'}-{rid}"
        answer = call(gateway, sid, rid, marked(marker, json_text(value)), sdk)
        result = answer.get("result") or {}
        text = " ".join(c.get("text", "") for c in result.get("content", []))
        sent = forwarded(gateway, marker)
        if expected == ALLOWED:
            ok = not result.get("isError") and len(sent) == 1 and same(sent[0], value)
        elif (answer.get("error") or {}).get("code") == -32700:
            ok = expected == REFUSED and not sent  # not even JSON to the gateway (a lone surrogate): never forwarded
        else:
            ok = result.get("isError") is True and "decision id" in text and not sent
            ok = ok and ((SEE in text) == (expected == REFUSED)) and "Denied by policy" in text
        if not ok:
            wrong.append(f"{name}: expected {expected}, got {str(answer)[:300]}, forwarded {str(sent)[:100]}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("spelling", "value"), [("1e1", 10.0), ("1E2", 100.0), ("-0", 0), ("-0.0", -0.0), ("100.0", 100.0), ("0.5e1", 5.0)]
)
def test_a_number_is_forwarded_as_the_value_the_policy_saw(gateway: RunningGateway, spelling: str, value: Any) -> None:
    """The gateway forwards the value it parsed (and the policy saw), not the agent's spelling of it."""
    sid = open_session(gateway)
    marker = f"num-{spelling}"
    answer = call(gateway, sid, 7, marked(marker, spelling), False)
    assert not answer["result"].get("isError"), answer
    assert [same(v, value) for v in forwarded(gateway, marker)] == [True]


@pytest.mark.parametrize(
    "spelling", ["100.00000000000001", "1e400", "-1e400", "18446744073709551616", "9223372036854775808", "4e-320"]
)
def test_a_number_the_engine_cannot_read_exactly_is_refused_and_recorded(
    gateway: RunningGateway, spelling: str
) -> None:
    sid = open_session(gateway)
    marker = f"refused-{spelling}"
    answer = call(gateway, sid, 8, marked(marker, spelling), False)
    text = answer["result"]["content"][0]["text"]
    assert answer["result"]["isError"] and SEE in text, answer
    assert not forwarded(gateway, marker)
    decision_id = text.rsplit("decision id ", 1)[1].rstrip(").")
    records = [r for r in gateway.audit_records() if r.get("decision_id") == decision_id]
    decision = [r for r in records if r["type"] == "decision"]
    assert len(decision) == 1 and decision[0]["allow"] is False and decision[0]["reasons"][0].startswith(SEE)
    assert decision[0]["input"]["arguments"] is None or "digest" in decision[0]["input"]["arguments"]
    assert [r["outcome"] for r in records if r["type"] == "outcome"] == ["denied"]


def test_padding_no_longer_hides_what_a_deny_rule_looks_for(gateway: RunningGateway) -> None:
    """The policy saw 16 KB of a padded command; the upstream got all of it. Now it sees it whole, or refuses."""
    sid = open_session(gateway)
    padded = json.dumps("a" * 17_000 + ";rm -rf /")
    answer = call(gateway, sid, 9, marked("pad", padded), False)
    assert answer["result"]["isError"] and "shell operator" in answer["result"]["content"][0]["text"]
    too_long = json.dumps("a" * 70_000 + ";rm -rf /")
    answer = call(gateway, sid, 10, marked("pad", too_long), False)
    assert answer["result"]["isError"] and SEE in answer["result"]["content"][0]["text"]
    assert not forwarded(gateway, "pad")


def test_prompt_and_completion_arguments_are_bounded_alike(gateway: RunningGateway) -> None:
    sid = open_session(gateway)
    for rid, (method, params) in enumerate(
        [
            ("prompts/get", {"name": "echo__greet", "arguments": {"who": "x" * 70_000}}),
            ("prompts/get", {"name": "echo__greet", "arguments": {"v": "main\tx"}}),
            (
                "completion/complete",
                {
                    "ref": {"type": "ref/prompt", "name": "echo__greet"},
                    "argument": {"name": "who", "value": "x" * 70_000},
                },
            ),
        ],
        start=20,
    ):
        body = json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        answer = parse(httpx2.post(gateway.url, content=body.encode(), headers=headers("ci-bot", sid), timeout=60))
        assert "error" in answer, (method, str(answer)[:300])
        message = answer["error"]["message"]
        assert "decision id" in message, message
        assert (SEE in message) == (rid != 21), message
    ok = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 30,
            "method": "prompts/get",
            "params": {"name": "echo__greet", "arguments": {"who": "world"}},
        }
    )
    answer = parse(httpx2.post(gateway.url, content=ok.encode(), headers=headers("ci-bot", sid), timeout=60))
    assert answer["result"]["messages"][0]["content"]["text"] == "Hello, world!"


def test_the_bounds_are_settings(tmp_path: Path) -> None:
    from gateway.config import load_config

    cfg = tmp_path / "g.toml"
    port = free_port()
    cfg.write_text(
        default_config(port, tmp_path, "", "").replace(
            "[policy]\n",
            "[policy]\nmax_argument_bytes = 100\nmax_argument_string = 10\nmax_argument_keys = 3\n"
            "max_argument_items = 4\nmax_argument_depth = 2\nthreads_per_agent = 1\nqueue_timeout_ms = 500\n",
        )
    )
    p = load_config(cfg).policy
    assert (
        p.max_argument_bytes,
        p.max_argument_string,
        p.max_argument_keys,
        p.max_argument_items,
        p.max_argument_depth,
        p.threads_per_agent,
        p.queue_timeout_ms,
    ) == (100, 10, 3, 4, 2, 1, 500)
