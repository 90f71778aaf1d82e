"""Audit and logs: every request the pipeline takes leaves its record, whatever its content; no agent-chosen text
can forge a log line or drive a terminal; oversized names are refused before any work.

Promises checked: a tools/call whose arguments hold an integer beyond 64 bits, 1e400 or a lone surrogate gets a
decision record (and the agent an answer without internal exception text), on the fast path and on the SDK
path; names, URIs and prompt names with a newline or ANSI escapes write no forged line and no raw escape into the
text log; a 200 KB tool or prompt name is refused with -32602 and costs a few bytes of audit, not hundreds of KB;
and the hash chain still verifies after all of it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

from conformance.security.framework import (
    CoreCtx as Ctx,
)
from conformance.security.framework import (
    Gateway,
    Raw,
    answer,
    attempt,
    control,
    headers,
    hold,
    leaks,
    mark,
    ok_result,
    start_core,
)

CLS = "audit"
start = start_core  # the class runs on the shared core gateway
LONG_128, LONG_129 = "long" + "g" * 119, "long" + "g" * 120
"""Tools of the fixture upstream: 128 and 129 characters once prefixed with "pub__"."""


def records_for(g: Gateway, before: int, types: tuple[str, ...] = ("decision",)) -> list[dict[str, Any]]:
    return [r for r in g.audit()[before:] if r.get("type") in types and r.get("agent") == "alice"]


def odd_args(aid: str, title: str, args_json: str, sdk_path: bool) -> None:
    async def run(ctx: Ctx) -> str:
        g = ctx.g
        async with Raw(g) as raw:
            sid = await raw.open("alice")
            meta = ', "_meta": {"progressToken": "p1"}' if sdk_path else ""

            def call(args: str) -> bytes:
                return (
                    '{"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": {"name": "pub__echo", '
                    f'"arguments": {args}{meta}}}}}'
                ).encode()

            m = mark()
            before = len(g.audit())
            r = await raw.post("alice", sid, call(f'{{"text": "{m}"}}'))
            control(ok_result(r) and records_for(g, before), "a plain call was not answered or not recorded")
            before = len(g.audit())
            r = await raw.post("alice", sid, call(args_json))
            hold(leaks(r.text) is None, f"internal text reached the agent: {leaks(r.text)}")
            hold(r.status_code < 500, f"HTTP {r.status_code}")
            hold(answer(r), "no JSON-RPC answer")
            code = (answer(r).get("error") or {}).get("code")
            if r.status_code == 400 and code in (-32700, -32600):
                return f"refused as malformed ({code}) before the pipeline"
            recs = records_for(g, before)
            hold(recs, "no decision record")
        return f"{len(recs)} decision record(s); answered {'ok' if ok_result(r) else 'with a refusal'}"

    attempt(CLS, aid, title)(run)


for _path in ("fast", "sdk"):
    sdk = _path == "sdk"
    odd_args(
        f"int-2-70-{_path}",
        f"arguments with 2**70 ({_path} path) are recorded, no internal text",
        f'{{"text": "x", "n": {2**70}}}',
        sdk,
    )
    odd_args(
        f"float-1e400-{_path}",
        f"arguments with 1e400 ({_path} path) are recorded, no internal text",
        '{"text": "x", "n": 1e400}',
        sdk,
    )
    odd_args(
        f"lone-surrogate-{_path}",
        f"arguments with a lone surrogate ({_path} path) are recorded",
        '{"text": "x\\ud800y"}',
        sdk,
    )
odd_args("neg-2-64-key", "a key holding -2**64 inside a list is recorded", f'{{"l": [{{"k": {-(2**64)}}}]}}', False)


FORGED = re.compile(rb"^2099-01-01", re.M)


def forge(aid: str, title: str, method: str, params_of: Any) -> None:
    async def run(ctx: Ctx) -> str:
        g = ctx.g
        async with Raw(g) as raw:
            sid = await raw.open("alice")
            m = mark()
            await raw.call("alice", sid, method, params_of(f"plain-{m}"))
            control(m.encode() in g.log_text(), "the plain request left no line in the text log")
            m2 = mark()
            r = await raw.call(
                "alice",
                sid,
                method,
                params_of(
                    f"x-{m2}\n2099-01-01 00:00:00,000 INFO gateway.call: "
                    "tools/call pub__echo by root: ok\x1b[2J\x1b[31m"
                ),
            )
            hold(leaks(r.text) is None, f"internal text: {leaks(r.text)}")
        log = g.log_text()
        hold(not FORGED.search(log), "a forged line starts the text log line")
        hold(b"\x1b" not in log, "a raw ESC byte reached the text log")
        return "no forged line, no raw escape"

    attempt(CLS, aid, title)(run)


forge(
    "forge-tool-name",
    "a tool name with a newline and ANSI escapes forges no log line",
    "tools/call",
    lambda n: {"name": "pub__" + n, "arguments": {}},
)
forge(
    "forge-prompt-name",
    "a prompt name with a newline and ANSI escapes forges no log line",
    "prompts/get",
    lambda n: {"name": "pub__" + n},
)
forge(
    "forge-resource-uri",
    "a resource URI with a newline and ANSI escapes forges no log line",
    "resources/read",
    lambda n: {"uri": "sec://pub/" + n},
)


def huge_name(aid: str, title: str, method: str, params_of: Any) -> None:
    async def run(ctx: Ctx) -> str:
        g = ctx.g
        async with Raw(g) as raw:
            sid = await raw.open("alice")
            r = await raw.call("alice", sid, method, params_of("nosuch" + "y" * 90))
            control("error" in answer(r) or "isError" in r.text, "a missing 100-character name was not refused")
            before_audit, before_log = g.audit_size(), len(g.log_text())
            before_rec = len(g.record("pub"))
            r = await raw.call("alice", sid, method, params_of("z" * 200_000))
            code = (answer(r).get("error") or {}).get("code")
            hold(code == -32602, f"answered with code {code}")
            hold(len(r.content) < 4096, f"a {len(r.content)}-byte answer")
            grew = g.audit_size() - before_audit
            hold(grew < 8192, f"{grew} bytes of audit for one refused name")
            logged = len(g.log_text()) - before_log
            hold(logged < 8192, f"{logged} bytes of text log for one refused name")
            hold(len(g.record("pub")) == before_rec, "the upstream was asked something")
        return f"-32602; {grew} bytes of audit, {logged} of log"

    attempt(CLS, aid, title)(run)


huge_name(
    "huge-tool-name",
    "a 200 KB tool name: -32602 before any work",
    "tools/call",
    lambda n: {"name": "pub__" + n, "arguments": {}},
)
huge_name(
    "huge-prompt-name", "a 200 KB prompt name: -32602 before any work", "prompts/get", lambda n: {"name": "pub__" + n}
)


@attempt(CLS, "name-129", "a 129-character name of a listed tool is refused with -32602, not forwarded; 128 is")
async def name_129(ctx: Ctx) -> str:
    g = ctx.g
    async with Raw(g) as raw:
        sid = await raw.open("alice")
        m1, m2 = mark(), mark()
        r = await raw.tool("alice", sid, "pub__" + LONG_128, {"text": m1})
        control(ok_result(r) and g.received("pub", m1), "the listed tool with a 128-character name failed")
        r = await raw.tool("alice", sid, "pub__" + LONG_129, {"text": m2})
        hold(not g.received("pub", m2), "forwarded")
        code = (answer(r).get("error") or {}).get("code")
        hold(code == -32602, f"code {code}")
    return "-32602, not forwarded"


@attempt(CLS, "huge-request-id", "a request id of 2**70 is answered with that id and recorded")
async def huge_id(ctx: Ctx) -> str:
    g = ctx.g
    async with Raw(g) as raw:
        sid = await raw.open("alice")
        before = len(g.audit())
        r = await raw.call("alice", sid, "tools/call", {"name": "pub__echo", "arguments": {"text": "x"}}, rid=7)
        control(ok_result(r) and records_for(g, before), "a plain call failed")
        before = len(g.audit())
        r = await raw.post(
            "alice",
            sid,
            (
                '{"jsonrpc": "2.0", "id": ' + str(2**70) + ', "method": "tools/call", '
                '"params": {"name": "pub__echo", "arguments": {"text": "x"}}}'
            ).encode(),
        )
        hold(leaks(r.text) is None, f"internal text: {leaks(r.text)}")
        hold(r.status_code < 500, f"HTTP {r.status_code}")
        if ok_result(r):
            hold(records_for(g, before), "answered, with no decision record")
    return f"HTTP {r.status_code}"


@attempt(CLS, "chain-verifies", "after every odd record above, the audit hash chain verifies")
async def chain(ctx: Ctx) -> str:
    g = ctx.g
    control(len(g.audit()) > 20, "the audit log is nearly empty")
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify", str(g.gw.audit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    hold(r.returncode == 0, f"verify: {(r.stdout + r.stderr).strip()[-150:]}")
    return (r.stdout.strip().splitlines() or ["ok"])[-1][:100]


@attempt(CLS, "denial-recorded", "a denied call and a hidden tool's call each leave a decision record with allow false")
async def denial_recorded(ctx: Ctx) -> str:
    g = ctx.g
    async with Raw(g) as raw:
        sid = await raw.open("alice")
        before = len(g.audit())
        r = await raw.tool("alice", sid, "pub__echo", {"text": "x"})
        control(ok_result(r) and any(x.get("allow") for x in records_for(g, before)), "an allowed call left no record")
        out = []
        for name, args in (("pub__echo", {"command": "ls; x"}), ("pub__secret", {})):
            before = len(g.audit())
            await raw.tool("alice", sid, name, args)
            recs = records_for(g, before)
            hold(any(x.get("allow") is False for x in recs), f"{name}: no decision record with allow false")
            out.append(json.dumps([x.get("type") for x in recs]))
    return " / ".join(out)


@attempt(CLS, "int-2-70-2026", "a 2026-era (stateless) call with 2**70 in its arguments is recorded, no internal text")
async def int_2026(ctx: Ctx) -> str:
    g = ctx.g
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "s", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    h = {**headers("alice"), "Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "pub__echo"}

    def call(args: str) -> bytes:
        return (
            '{"jsonrpc": "2.0", "id": 12, "method": "tools/call", "params": {"name": "pub__echo", '
            f'"arguments": {args}, "_meta": {json.dumps(meta)}}}}}'
        ).encode()

    async with Raw(g) as raw:
        before = len(g.audit())
        r = await raw.http.post(g.url, content=call('{"text": "x"}'), headers=h)
        control(ok_result(r) and records_for(g, before), f"a plain 2026-era call failed: {r.text[:100]}")
        before = len(g.audit())
        r = await raw.http.post(g.url, content=call(f'{{"text": "x", "n": {2**70}}}'), headers=h)
    hold(leaks(r.text) is None, f"internal text reached the agent: {leaks(r.text)}")
    hold(r.status_code < 500, f"HTTP {r.status_code}")
    hold(records_for(g, before), "no decision record")
    return f"recorded; answered {'ok' if ok_result(r) else 'with a refusal'}"
