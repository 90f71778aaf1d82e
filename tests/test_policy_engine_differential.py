"""Engine differential: every JSON value shape an embedded engine might read otherwise than OPA (control characters,
Unicode escapes and normalisation, numbers at the edges of precision and range, huge and deep values), decided the
way the gateway decides it (bounds check, then each local engine: regorus's RVM, its interpreter, regopy) and by
OPA's own Go evaluator (``opa-golib-python-bindings``, installed by scripts/setup.sh --test: this test runs
whenever it is importable). A difference must be refused at the gateway, or be an over-denial listed here;
the embedded engine never allows what OPA denies. The cases live in conformance/security/engine_cases.py, which
the security suite sends through a real gateway.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from conformance.security.engine_cases import (
    ALLOWED,
    DENIED,
    EMBEDDED_OVER_DENIALS,
    PROBE_POLICY,
    REFUSED,
    engine_differential_cases,
)
from gateway.decide import Decider, Request
from gateway.identity import Agent
from gateway.metrics import Metrics
from gateway.policy.bounds import Limits
from gateway.policy.embedded import CompiledPolicy, EmbeddedEngine, canonical_literals, new_evaluator
from gateway.policy.engines import LOCAL_ENGINES, compile_source
from gateway.policy.loader import PolicySource
from tests.conftest import REPO

CASES = engine_differential_cases()

_PROBE = PolicySource({"p.rego": PROBE_POLICY}, {}, "probe", Path("probe"))
_POLICIES = {engine: compile_source(_PROBE, "gateway/decision", engine) for engine in LOCAL_ENGINES}
_EV = new_evaluator()

REGORUS_OVER_DENIALS: set[str] = set()
"""Cases regorus denies where OPA allows. Its regex (Rust) reads ``\\s`` as Unicode white space, so U+00A0, U+0085
and U+2029 were here until the engine spelt literal patterns' ``\\s \\d \\w`` as RE2's ASCII classes."""
_DECIDER = Decider(object(), Metrics(), Limits())  # type: ignore[arg-type]
_REQ = Request(agent=Agent("probe", "t", (), "api_key"), action="tools/call", view=None, name="rec__echo")


def gateway_decides(value: Any, engine: str = "embedded") -> tuple[str, tuple[str, ...]]:
    inp = _DECIDER.build_input(_REQ, "rec", tool="echo", arguments={"v": value})
    refusal = _DECIDER.refusal({"v": value})
    if refusal is not None:
        assert inp["arguments"] is None  # the engine never sees what it cannot see whole
        return REFUSED, (refusal,)
    decision = _POLICIES[engine].evaluate_input(inp)
    assert decision.error is None, decision.error
    return (ALLOWED if decision.allow else DENIED), decision.reasons


@pytest.mark.parametrize("engine", LOCAL_ENGINES)
@pytest.mark.parametrize(("name", "value", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_gateway_decides_each_shape_as_expected(name: str, value: Any, expected: str, engine: str) -> None:
    got, reasons = gateway_decides(value, engine)
    if engine != "regopy" and name in REGORUS_OVER_DENIALS:
        assert (expected, got) == (ALLOWED, DENIED), reasons
        return
    assert got == expected, reasons
    if got == REFUSED:
        assert reasons[0].startswith("arguments exceed what the policy can see: ")


@pytest.mark.skipif(
    importlib.util.find_spec("opa_bindings") is None,
    reason="opa-golib-python-bindings (OPA's Go evaluator) is not installed",
)
@pytest.mark.parametrize("engine", LOCAL_ENGINES)
def test_the_embedded_engine_agrees_with_opa_or_the_gateway_refuses(engine: str) -> None:
    from opa_bindings import OpaEngine

    opa = OpaEngine()
    opa.add_policy("p.rego", PROBE_POLICY)
    differences = []
    for name, value, _expected in CASES:
        got, _ = gateway_decides(value, engine)
        if got == REFUSED:
            continue
        theirs = opa.eval_document("gateway.decision", {"arguments": {"v": value}})
        want = ALLOWED if theirs["allow"] else DENIED
        if engine != "regopy" and name in REGORUS_OVER_DENIALS and (want, got) == (ALLOWED, DENIED):
            continue
        if got == ALLOWED and want == DENIED:
            differences.append(f"{name}: OPA denies ({theirs['reasons']}), the embedded engine allows")
        elif got != want:
            differences.append(f"{name}: OPA {want}, the embedded engine {got}")
    for name, value in EMBEDDED_OVER_DENIALS:  # rego-cpp's escaped spelling; regorus reads these as OPA does
        theirs = opa.eval_document("gateway.decision", {"arguments": {"v": value}})
        ours = gateway_decides(value, engine)[0]
        if engine != "regopy":
            if ours != (ALLOWED if theirs["allow"] else DENIED):
                differences.append(f"{name}: OPA {theirs['allow']}, {engine} {ours}")
        elif not (theirs["allow"] and ours == DENIED):
            differences.append(f"{name}: no longer over-denied: drop it from EMBEDDED_OVER_DENIALS and the docs")
    assert not differences, "\n".join(differences)


def test_a_rule_that_matches_a_control_character_denies_it_on_every_reading() -> None:
    """Each control character, in a string and in an object key, against the rule shapes that missed it."""
    rules = {
        "regex class": 'regex.match("[\\u0001-\\u001f\\u007f]", x)',
        "regex whitespace": 'regex.match("\\\\s", x)',
        "contains escape": "contains(x, c)",
        "equals": 'x == concat("", ["a", c, "b"])',
    }
    for label, rule in rules.items():
        policy = CompiledPolicy(
            PolicySource(
                {
                    "p.rego": (
                        "package gateway\nimport rego.v1\n"
                        "default hit := false\n"
                        f"hit if {{ c := input.arguments.c; x := input.arguments.v; {rule} }}\n"
                        f"hit if {{ c := input.arguments.c; some x, _ in input.arguments.o; {rule} }}\n"
                        'decision := {"allow": hit == false, "reasons": []}\n'
                    )
                },
                {},
                "r",
                Path("r"),
            ),
            "gateway/decision",
        )
        for code in [*range(1, 0x20), 0x7F]:
            ch = chr(code)
            if label == "regex whitespace" and ch not in "\t\n\x0b\x0c\r":
                continue
            args = {"v": f"a{ch}b", "o": {"plain": 1}, "c": ch}
            assert not policy.decide(_EV, {"arguments": args}).allow, (label, hex(code))
            args = {"v": "plain", "o": {f"a{ch}b": 1}, "c": ch}
            assert not policy.decide(_EV, {"arguments": args}).allow, (label, hex(code), "key")


def test_policy_literals_are_spelt_as_the_input_is() -> None:
    src = 'x := "\\u00e9\\u000a\\/\\u001F" if input.a == "caf\\u00e9"\ny := `raw\\n`\n'
    assert canonical_literals(src) == 'x := "é\\n/\\u001f" if input.a == "café"\ny := `raw\\n`\n'


_DEEP_REGEX = """
import sys, anyio
from pathlib import Path
from gateway.policy.embedded import EmbeddedEngine
d = Path(sys.argv[1])
(d / "p.rego").write_text('package gateway\\nimport rego.v1\\ndefault m := false\\n'
                          'm if regex.match("^h(a|b|t|p|:|/)*$", input.arguments.v)\\n'
                          'decision := {"allow": m, "reasons": []}\\n')
async def main():
    e = EmbeddedEngine(d, "gateway/decision", 60000, threads=1)
    print((await e.decide({"agent": {"id": "a"}, "arguments": {"v": "http://" + "a" * 65536}})).allow)
anyio.run(main)
"""


def test_a_regex_over_the_longest_string_allowed_does_not_crash_the_engine(tmp_path: Path) -> None:
    """std::regex recurses per character: the 8 MB default thread stack crashed the process (SIGSEGV) here."""
    out = subprocess.run(
        [sys.executable, "-c", _DEEP_REGEX, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"
    assert Limits().max_string <= 65536  # what this test covers


def test_one_agent_flooding_heavy_inputs_gets_only_its_share_of_evaluators(tmp_path: Path) -> None:
    """A hostile agent with many heavy (within bounds) decisions in flight; another agent's decisions all succeed,
    and none waits behind the flood (it never reads "policy evaluation failed" or "busy")."""
    (tmp_path / "p.rego").write_text(
        "package gateway\nimport rego.v1\n"
        'hits contains k if { some k, x in input.arguments; regex.match("^(a|b)*c$", x) }\n'
        'decision := {"allow": count(hits) == 0, "reasons": []}\n'
    )
    engine = EmbeddedEngine(tmp_path, "gateway/decision", 200, threads=4, queue_timeout_ms=300)
    heavy = {"agent": {"id": "hostile"}, "arguments": {f"k{i}": "ab" * 120 for i in range(1000)}}
    light = {"agent": {"id": "good"}, "arguments": {"k": "ok"}}
    good: list[Any] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(16):
                tg.start_soon(engine.decide, heavy)
            await anyio.sleep(0.05)
            for _ in range(20):
                good.append(await engine.decide(light))
            tg.cancel_scope.cancel()  # the flood's evaluations finish on their evaluators, not abandoned
        await engine.aclose()

    anyio.run(main)
    assert all(d.allow and d.error is None for d in good), [d for d in good if not d.allow][:3]
    assert engine._agents == {}  # no slot left held once the callers are gone


def test_a_resource_uri_is_bounded_as_arguments_are() -> None:
    """The URI of resources/read and subscriptions is forwarded too: the policy must be able to read it exactly."""
    for uri, refused in [("file:///x\x00y", True), ("file:///" + "a" * 70_000, True), ("file:///ok\ny", False)]:
        req = Request(agent=_REQ.agent, action="resources/read", view=None, uri=uri)
        inp = _DECIDER.build_input(req, "rec")
        got = anyio.run(_DECIDER.decide, inp) if refused else None
        assert (
            got is not None
            and not got.allow
            and got.reasons[0].startswith("arguments exceed what the policy can see: resource ")
        ) == refused, (uri[:20], got)
