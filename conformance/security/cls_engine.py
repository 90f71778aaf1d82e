"""Engine differential: every JSON value shape an engine might read differently, decided by the embedded engine
(rego-cpp) and by OPA's own evaluator (behind the gateway's OPA engine), each through a real gateway.

The cases and their probe policy come from ``conformance/security/engine_cases.py`` (``engine_differential_cases()``:
``(name, value, expectation)``, arguments ``{"v": value}``). Per case and engine: ``refused`` and ``denied`` must
not reach the upstream; ``allowed`` must reach it with the value sent (read exactly); and both engines must agree
on whether the call went through. The positive control of every case: a plain allowed value is forwarded by
both gateways.
"""

from __future__ import annotations

import json
import math
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2

from conformance.security.framework import (
    REPO,
    Gateway,
    NotYet,
    Raw,
    attempt,
    control,
    hold,
    leaks,
    ok_result,
    refused,
    result_text,
    sec_upstream,
)
from conformance.security.framework import start as launch
from tests.conftest import free_port

CLS = "engine"

try:
    from conformance.security.engine_cases import PROBE_POLICY, engine_differential_cases

    CASES: list[tuple[str, Any, str]] | None = engine_differential_cases()
except ImportError:
    PROBE_POLICY, CASES = "", None


@dataclass
class Ctx:
    gateways: dict[str, Gateway] = field(default_factory=dict)
    opa: subprocess.Popen[bytes] | None = None
    sids: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        for g in self.gateways.values():
            g.end_lingering()
            g.stop()
        if self.opa is not None:
            self.opa.terminate()
            self.opa.wait(10)


def start(work: Path) -> Ctx:
    ctx = Ctx()
    if CASES is None:
        return ctx
    policy = work / "probe"
    policy.mkdir(parents=True, exist_ok=True)
    (policy / "probe.rego").write_text(PROBE_POLICY)
    ctx.gateways["embedded"] = launch(work / "embedded", sec_upstream("pub", work / "embedded"), policy=policy)
    port = free_port()
    log = (work / "opa.log").open("wb")
    ctx.opa = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "conformance" / "policy" / "opa_standin.py"),
            "--policy",
            str(policy),
            "--port",
            str(port),
            "--backend",
            "opa-go",
        ],
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx2.HTTPError:
            time.sleep(0.2)
    try:
        ctx.gateways["opa"] = launch(
            work / "opa",
            sec_upstream("pub", work / "opa"),
            policy=policy,
            policy_extra=f'engine = "opa"\nopa_url = "http://127.0.0.1:{port}"',
        )
    except Exception:
        ctx.stop()
        raise
    return ctx


def encode(value: Any) -> str:
    """JSON text for a case value, with the spellings JSON lacks (infinity) written as numbers out of range."""
    if isinstance(value, float) and math.isinf(value):
        return "1e400" if value > 0 else "-1e400"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(encode(v) for v in value) + "]"
    return json.dumps(value)


def exact(text: str) -> Any:
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


async def send(ctx: Ctx, raw: Raw, engine: str, value_json: str) -> tuple[Any, bool, Any]:
    """(response, forwarded, the arguments the upstream received)"""
    g = ctx.gateways[engine]
    if engine not in ctx.sids:
        ctx.sids[engine] = await raw.open("root")
    m = "MARK" + secrets.token_hex(6)
    body = (
        '{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "pub__echo", "arguments": '
        f'{{"text": "{m}", "v": {value_json}}}}}}}'
    ).encode()
    r = await raw.post("root", ctx.sids[engine], body)
    got = [line for line in g.record("pub") if m.encode() in line]
    sent = exact(got[-1].decode())["params"]["arguments"] if got else None
    return r, bool(got), sent


def case_attempt(i: int, name: str, value: Any, expect: str) -> None:
    async def run(ctx: Ctx) -> str:
        out = {}
        for engine, g in ctx.gateways.items():
            async with Raw(g, linger=True) as raw:
                r, fwd, _ = await send(ctx, raw, engine, '"plain"')
                control(ok_result(r) and fwd, f"{engine}: a plain value was not forwarded")
                r, fwd, sent = await send(ctx, raw, engine, encode(value))
                hold(leaks(r.text) is None, f"{engine}: internal text reached the agent: {leaks(r.text)}")
                if expect in ("refused", "denied"):
                    hold(not fwd, f"{engine}: forwarded, expected {expect}")
                    hold(refused(r), f"{engine}: the agent got a result")
                else:
                    hold(fwd and ok_result(r), f"{engine}: not forwarded, expected allowed: {result_text(r)[:80]}")
                    want = exact(encode(value))
                    hold(sent["v"] == want, f"{engine}: the upstream received {str(sent['v'])[:40]!r}")
                out[engine] = fwd
        if len(out) == 2:
            hold(out["embedded"] == out["opa"], f"the engines differ: {out}")
        return f"{expect} by {' and '.join(out)}"

    slug = "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())[:22]
    attempt(CLS, f"eng-{i:02d}-{slug}", f"engine differential: {name} ({expect})")(run)


if CASES is None:

    @attempt(CLS, "engine-cases", "the engine differential cases (conformance/security/engine_cases.py)")
    async def no_cases(ctx: Ctx) -> str:
        raise NotYet("conformance/security/engine_cases.py (engine_differential_cases) is not on this branch")
else:
    for _i, (_name, _value, _expect) in enumerate(CASES):
        case_attempt(_i, _name, _value, _expect)
