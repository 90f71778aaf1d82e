"""Policy/argument consistency: the policy decides on exactly what the upstream receives.

The suite's policy denies a ``command`` with a shell operator, a ``ref`` with whitespace or an operator, a list
item "bad", the value "FORBIDDEN" at any depth, the key "evil", and ``n`` over 100. Each attempt hides such a
value where a policy engine might not look (past a length, item, depth or key limit; behind duplicate keys, a
non-object, an escape or a control character; in a number at the edge of precision or range). It passes when the
call is not forwarded with that value (the fixture upstream records every message it receives) and the refusal
is on record as a decision with allow false. Controls: the same value in plain sight is denied (the rule works),
and the benign call is forwarded (the set-up works).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from conformance.security.framework import (
    CoreCtx,
    Gateway,
    Raw,
    attempt,
    control,
    core,
    hold,
    leaks,
    mark,
    ok_result,
    refused,
    result_text,
)

CLS = "arguments"


@dataclass
class Ctx(CoreCtx):
    sid: str = ""


def start(work: Path) -> Ctx:
    return Ctx(core(work.parent))


SDK_PATH = ', "_meta": {"progressToken": "p1"}'
"""A progress token sends a call down the SDK's path instead of the fast path: both must decide the same."""


def body(args_json: str, meta: str = "") -> bytes:
    """A tools/call of pub__echo whose arguments are the given JSON text, as written."""
    return (
        '{"jsonrpc": "2.0", "id": 77, "method": "tools/call", "params": {"name": "pub__echo", "arguments": '
        + args_json
        + meta
        + "}}"
    ).encode()


async def send(ctx: Ctx, raw: Raw, args_json: str, meta: str = "") -> Any:
    if not ctx.sid:
        ctx.sid = await raw.open("alice")
    return await raw.post("alice", ctx.sid, body(args_json, meta))


def denial_on_record(g: Gateway, before: int) -> bool:
    return any(
        r.get("type") == "decision" and r.get("allow") is False and r.get("action") == "tools/call"
        for r in g.audit()[before:]
    )


def smuggle(
    aid: str,
    title: str,
    attack: str,
    plain: str,
    good: str,
    same_value: bool = False,
    audited: bool = True,
    meta: str = "",
) -> None:
    """``attack``, ``plain`` and ``good`` are JSON texts with MARK where the marker goes. ``same_value``: the
    gateway may also forward the value its policy saw (the marked one is the one it must not let through).
    ``audited``: the refusal must be on record as a decision (not for requests the protocol layer rejects)."""

    async def run(ctx: Ctx) -> str:
        g = ctx.g
        async with Raw(g, linger=True) as raw:
            m = mark()
            r = await send(ctx, raw, good.replace("MARK", m), meta)
            control(ok_result(r) and g.received("pub", m), f"the benign call failed: {result_text(r)[:120]}")
            m = mark()
            r = await send(ctx, raw, plain.replace("MARK", m), meta)
            control(refused(r) and not g.received("pub", m), "the value in plain sight was not denied")
            m = mark()
            before = len(g.audit())
            r = await send(ctx, raw, attack.replace("MARK", m), meta)
            hold(not g.received("pub", m), "forwarded: the upstream received what the policy did not decide on")
            hold(leaks(r.text) is None, f"internal text reached the agent: {leaks(r.text)}")
            if same_value and ok_result(r):
                return "forwarded the value the policy decided on, not the other"
            hold(refused(r), "the agent got a result")
            hold(not audited or denial_on_record(g, before), "no decision record with allow false for the refusal")
        return "not forwarded; " + result_text(r)[:100]

    attempt(CLS, aid, title)(run)


def nest(depth: int, leaf: str, kind: str = "object") -> str:
    out = leaf
    for _ in range(depth):
        out = f'{{"a": {out}}}' if kind == "object" else f"[{out}]"
    return out


smuggle(
    "pad-string",
    "a shell operator after 17,000 spaces is decided on",
    json.dumps({"command": "ls" + " " * 17000 + "; rm -rf / MARK"}),
    '{"command": "ls; MARK"}',
    '{"command": "ls MARK"}',
)
smuggle(
    "list-1001",
    "a bad item after 1,000 good ones is decided on",
    '{"text": "MARK", "items": ' + json.dumps(["ok"] * 1000 + ["bad"]) + "}",
    '{"text": "MARK", "items": ["bad"]}',
    '{"text": "MARK", "items": ["ok", "ok"]}',
)
smuggle(
    "deep-object-40",
    "a forbidden value 40 objects deep is decided on",
    '{"text": "MARK", "deep": ' + nest(40, '"FORBIDDEN"') + "}",
    '{"text": "MARK", "deep": ' + nest(3, '"FORBIDDEN"') + "}",
    '{"text": "MARK", "deep": ' + nest(3, '"fine"') + "}",
)
smuggle(
    "deep-list-40",
    "a forbidden value 40 lists deep is decided on",
    '{"text": "MARK", "deep": ' + nest(40, '"FORBIDDEN"', "list") + "}",
    '{"text": "MARK", "deep": ' + nest(3, '"FORBIDDEN"', "list") + "}",
    '{"text": "MARK", "deep": ' + nest(3, '"fine"', "list") + "}",
)
smuggle(
    "keys-20000",
    "a forbidden key after 20,000 others is decided on",
    '{"text": "MARK", ' + ", ".join(f'"k{i}": 0' for i in range(20000)) + ', "evil": 1}',
    '{"text": "MARK", "evil": 1}',
    '{"text": "MARK", "k1": 0, "k2": 0}',
)
smuggle(
    "long-list-of-strings",
    "a bad item in a 5,000-item list of long strings is decided on",
    '{"text": "MARK", "items": ' + json.dumps(["y" * 100] * 5000 + ["bad"]) + "}",
    '{"text": "MARK", "items": ["bad"]}',
    '{"text": "MARK", "items": ["ok"]}',
)
smuggle(
    "dup-keys",
    "duplicate argument keys: the upstream never gets the value the policy did not see",
    '{"command": "ls; MARK", "command": "ls"}',
    '{"command": "ls; MARK"}',
    '{"command": "ls MARK"}',
    True,
)
smuggle(
    "dup-keys-reversed",
    "duplicate argument keys, the safe one first",
    '{"command": "ls", "command": "ls; MARK"}',
    '{"command": "ls; MARK"}',
    '{"command": "ls MARK"}',
    True,
)
smuggle(
    "args-string",
    "arguments that are a string are not forwarded undecided",
    '"ls; MARK"',
    '{"command": "ls; MARK"}',
    '{"command": "ls MARK"}',
    audited=False,
)
smuggle(
    "args-list",
    "arguments that are a list are not forwarded undecided",
    '["ls; MARK", {"command": "ls; MARK"}]',
    '{"command": "ls; MARK"}',
    '{"command": "ls MARK"}',
    audited=False,
)
for _name, _esc in [
    ("newline", "\\n"),
    ("tab", "\\t"),
    ("cr", "\\r"),
    ("vtab", "\\u000b"),
    ("formfeed", "\\f"),
    ("escaped-semicolon", "\\u003b"),
]:
    smuggle(
        f"ref-{_name}",
        f"a ref holding {_name} (written {_esc}) is denied like one holding a space",
        '{"text": "MARK", "ref": "main' + _esc + 'x"}',
        '{"text": "MARK", "ref": "main x"}',
        '{"text": "MARK", "ref": "main"}',
    )


smuggle(
    "pad-string-sdk",
    "a shell operator after 17,000 spaces, on the SDK path",
    json.dumps({"command": "ls" + " " * 17000 + "; rm -rf / MARK"}),
    '{"command": "ls; MARK"}',
    '{"command": "ls MARK"}',
    meta=SDK_PATH,
)
smuggle(
    "list-1001-sdk",
    "a bad item after 1,000 good ones, on the SDK path",
    '{"text": "MARK", "items": ' + json.dumps(["ok"] * 1000 + ["bad"]) + "}",
    '{"text": "MARK", "items": ["bad"]}',
    '{"text": "MARK", "items": ["ok", "ok"]}',
    meta=SDK_PATH,
)
smuggle(
    "ref-newline-sdk",
    "a ref holding a newline, on the SDK path",
    '{"text": "MARK", "ref": "main\\nx"}',
    '{"text": "MARK", "ref": "main x"}',
    '{"text": "MARK", "ref": "main"}',
    meta=SDK_PATH,
)
smuggle(
    "dup-keys-sdk",
    "duplicate argument keys, on the SDK path",
    '{"command": "ls; MARK", "command": "ls"}',
    '{"command": "ls; MARK"}',
    '{"command": "ls MARK"}',
    True,
    meta=SDK_PATH,
)


def number_case(aid: str, literal: str) -> None:
    """n written as ``literal``: if forwarded, the upstream must not read a number over 100 (read exactly)."""

    async def run(ctx: Ctx) -> str:
        g = ctx.g
        async with Raw(g, linger=True) as raw:
            m = mark()
            r = await send(ctx, raw, f'{{"text": "{m}", "n": 50}}')
            control(ok_result(r) and g.received("pub", m), "n = 50 was not forwarded")
            m = mark()
            r = await send(ctx, raw, f'{{"text": "{m}", "n": 101}}')
            control(refused(r) and not g.received("pub", m), "n = 101 was not denied")
            m = mark()
            r = await send(ctx, raw, f'{{"text": "{m}", "n": {literal}}}')
            hold(leaks(r.text) is None, f"internal text reached the agent: {leaks(r.text)}")
            got = [line for line in g.record("pub") if m.encode() in line]
            if not got:
                hold(refused(r), "not forwarded, yet the agent got a result")
                return "not forwarded; " + result_text(r)[:80]
            sent = json.loads(
                got[-1],
                parse_float=Decimal,
                parse_int=Decimal,
                parse_constant=lambda c: Decimal(c.replace("Infinity", "Inf")),
            )
            n = sent["params"]["arguments"].get("n")
            if not isinstance(n, Decimal):
                return f"forwarded as n = {json.dumps(n)} (not a number over 100)"
            hold(n <= 100, f"the policy allowed n, and the upstream read n = {n}")
        return f"forwarded as n = {n} (not over 100)"

    attempt(CLS, aid, f"n = {literal} is not forwarded as a number over 100 after the policy allowed it")(run)


for _aid, _lit in [
    ("num-precision", "100.00000000000001"),
    ("num-beyond-double", "100.0000000000000000000001"),
    ("num-exponent", "1e3"),
    ("num-2-70", str(2**70)),
    ("num-1e400", "1e400"),
    ("num-neg-zero-exp", "1.00000000000000001e2"),
]:
    number_case(_aid, _lit)
