"""Engine differential cases: JSON values the embedded engine (rego-cpp) might read otherwise than OPA does, or
otherwise than the upstream that receives them.

Each case is ``(name, value, expectation)``: a ``tools/call`` whose arguments are ``{"v": value}``, decided by
``PROBE_POLICY``, must be

- ``"refused"``: refused before the engine ("arguments exceed what the policy can see: ..."; not forwarded);
- ``"denied"``: denied by the probe policy (not forwarded);
- ``"allowed"``: allowed, and forwarded with the value the policy saw.

The expectations are OPA's decisions on the same input (tests/test_policy_engine_differential.py checks them on OPA's
own evaluator when ``opa-golib-python-bindings`` is installed), except where the gateway refuses what an engine
cannot read exactly. ``PROBE_POLICY`` allows anything else (lists, calls without ``v``), so its positive controls
are the ``allowed`` cases.
"""

from __future__ import annotations

from typing import Any

PROBE_POLICY = r"""package gateway

import rego.v1

v := input.arguments.v

deny contains "shell operator or whitespace" if {
	is_string(v)
	regex.match("[\\s;|&]", v)
}

deny contains "control character" if {
	is_string(v)
	regex.match("[\u0001-\u001f\u007f]", v)
}

deny contains "newline" if {
	is_string(v)
	contains(v, "\n")
}

deny contains "line separator" if {
	is_string(v)
	contains(v, "\u2028")
}

deny contains "accented e" if {
	is_string(v)
	contains(v, "\u00e9")
}

deny contains "starts with a quote" if {
	is_string(v)
	regex.match("^\"", v)
}

deny contains "short tagged string" if {
	is_string(v)
	startswith(v, "short:")
	count(v) < 10
}

deny contains "over 100" if {
	is_number(v)
	v > 100
}

deny contains "negative" if {
	is_number(v)
	v < 0
}

deny contains "forbidden value" if {
	walk(input.arguments, [_, x])
	x == "forbidden"
}

deny contains "bad item" if {
	is_array(v)
	"bad" in v
}

decision := {"allow": count(deny) == 0, "reasons": sort([r | some r in deny])}
"""

ALLOWED, DENIED, REFUSED = "allowed", "denied", "refused"


def _nest(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"n": value}
    return value


EMBEDDED_OVER_DENIALS: list[tuple[str, Any]] = [
    ("backslash then n (two characters), under contains(v, newline)", "a\\nb"),
]
"""Values the embedded engine denies under ``PROBE_POLICY`` where OPA allows (never the reverse). rego-cpp
compares strings in their JSON-escaped spelling: a backslash followed by the letter n is spelt with two
backslashes and an n, which holds the two-character spelling of a newline, so ``contains(v, "\\n")`` is true;
neither reading of the input tells them apart (docs/policy.md). Kept out of the cases above, whose expectations
hold on both engines."""


def engine_differential_cases() -> list[tuple[str, Any, str]]:
    """Every JSON value shape the engine might read differently; see the module docstring."""
    cases: list[tuple[str, Any, str]] = [
        ("plain string", "main", ALLOWED),
        ("space", "main x", DENIED),
        ("semicolon", "main;x", DENIED),
        ("U+0000", "main\x00x", REFUSED),
    ]
    for code in [*range(0x01, 0x20), 0x7F]:
        cases.append((f"control character U+{code:04X}", f"main{chr(code)}x", DENIED))
    cases += [
        ("quote", 'a"b', ALLOWED),
        ('leading quote (regex ^")', '"x', DENIED),
        ("quote at the end", 'x"', ALLOWED),
        ("short string of quotes (count < 10)", 'short:""', DENIED),
        ("short string of backslashes (count < 10)", "short:\\\\", DENIED),
        ("ten characters with quotes (count = 10)", 'short:""""', ALLOWED),
        ("backslash", "a\\b", ALLOWED),
        ("backslash then t (two characters)", "a\\tb", ALLOWED),
        ("backslash then real newline", "a\\\nb", DENIED),
        ("escaped quote then newline", 'a\\"\nb', DENIED),
        ("U+2028 line separator", "x\u2028y", DENIED),
        ("U+2029 paragraph separator", "x\u2029y", ALLOWED),
        ("U+0085 next line", "x\u0085y", ALLOWED),
        ("U+00A0 no-break space", "x\u00a0y", ALLOWED),
        ("U+FEFF byte order mark", "\ufeffx", ALLOWED),
        ("precomposed e-acute", "caf\u00e9", DENIED),
        ("e + combining acute (not normalised by either engine)", "cafe\u0301", ALLOWED),
        ("non-BMP emoji", "x\U0001f600y", ALLOWED),
        ("non-BMP then newline", "\U0001f600\n", DENIED),
        ("lone surrogate", "x\ud800y", REFUSED),
        ("right-to-left override", "x\u202ey", ALLOWED),
        # numbers at the edges of precision and range
        ("100", 100, ALLOWED),
        ("101", 101, DENIED),
        ("100.5", 100.5, DENIED),
        ("100.0000000000001 (16 digits)", 100.0000000000001, REFUSED),
        ("100.00000000000001 (17 digits)", 100.00000000000001, REFUSED),
        ("0.30000000000000004", 0.30000000000000004, REFUSED),
        ("0.1", 0.1, ALLOWED),
        ("1e3", 1e3, DENIED),
        ("-0.0", -0.0, ALLOWED),
        ("-1", -1, DENIED),
        ("-1e-300", -1e-300, DENIED),
        ("5e-324 (smallest subnormal)", 5e-324, REFUSED),
        ("1e308", 1e308, DENIED),
        ("2**53 + 1", 2**53 + 1, DENIED),
        ("2**63 - 1", 2**63 - 1, DENIED),
        ("-(2**63)", -(2**63), DENIED),
        ("2**63", 2**63, REFUSED),
        ("2**64", 2**64, REFUSED),
        ("-(2**64)", -(2**64), REFUSED),
        ("2**70", 2**70, REFUSED),
        ("infinity (1e400)", float("inf"), REFUSED),
        ("true", True, ALLOWED),
        ("null", None, ALLOWED),
        # huge and deep values
        ("string of 17,000 characters then ;", "a" * 17_000 + ";rm", DENIED),
        ("string of 60,000 characters", "a" * 60_000, ALLOWED),
        ("string of 70,000 characters", "a" * 70_000, REFUSED),
        ("999 items, then bad", [*(["x"] * 999), "bad"], DENIED),
        ("1,001 items, bad last", [*(["x"] * 1000), "bad"], REFUSED),
        ("forbidden 20 levels deep", _nest(20, "forbidden"), DENIED),
        ("forbidden 40 levels deep", _nest(40, "forbidden"), REFUSED),
        ("900 keys and a forbidden value", {**{f"k{i}": i for i in range(900)}, "z": "forbidden"}, DENIED),
        ("18,000 keys", {f"k{i}": i for i in range(18_000)}, REFUSED),
        ("object key with a newline", {"a\nb": 1}, ALLOWED),
        ("forbidden under a key with a control character", {"k\x01": "forbidden"}, DENIED),
    ]
    return cases
