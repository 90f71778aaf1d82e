"""Protocol and session: duplicated identity/routing headers, session hijack, malformed JSON-RPC, batches, bodies.

Promises: a request carrying two values of a header that carries identity or routing is refused with 400 before
anything reads it (and nothing is forwarded); a session is its agent's alone (no DELETE, GET or POST by another
agent, however the headers are arranged); bad input gets a protocol error, reaches no upstream, leaks no internal
text, and the gateway keeps serving; body limits hold for chunked bodies too; /metrics and /readyz are not served
on the agents' port.
"""

from __future__ import annotations

import json

import httpx2
import orjson

from conformance.security.framework import (
    CORE_LIMIT,
    NotYet,
    Raw,
    answer,
    attempt,
    control,
    headers,
    hold,
    key,
    leaks,
    mark,
    ok_result,
    raw_http,
    rpc,
    start_core,
    status_of,
)
from conformance.security.framework import (
    CoreCtx as Ctx,
)

CLS = "protocol"
start = start_core  # the class runs on the shared core gateway
LIMIT = CORE_LIMIT


def echo_call(marker: str, rid: int = 7) -> bytes:
    return rpc(rid, "tools/call", {"name": "pub__echo", "arguments": {"text": marker}})


def head(
    port: int, hdrs: list[tuple[str, str]], body: bytes, method: str = "POST", path: str = "/mcp", length: bool = True
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1"]
    names = {n.lower() for n, _ in hdrs}
    if "host" not in names:
        lines.append(f"Host: 127.0.0.1:{port}")
    lines += [f"{n}: {v}" for n, v in hdrs]
    if length and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def base_headers(agent: str, sid: str | None) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers(agent, sid).items()]


def replace(hdrs: list[tuple[str, str]], name: str, values: list[str]) -> list[tuple[str, str]]:
    out = [(k, v) for k, v in hdrs if k.lower() != name.lower()]
    return out + [(name, v) for v in values]


def chunked(body: bytes, size: int = 4096) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        part = body[i : i + size]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return out + b"0\r\n\r\n"


# --- duplicated headers ----------------------------------------------------------------------------------------


def dup_case(name: str, single: str, values: list[str] | None = None, te: bool = False):
    async def run(ctx: Ctx) -> str:
        g = ctx.g
        port = g.gw.port
        async with Raw(g, linger=True) as raw:
            sid = await raw.open("alice")
            sid2 = await raw.open("alice")
        vals = values or [single, single]
        vals = [v.replace("{sid}", sid).replace("{sid2}", sid2).replace("{port}", str(port)) for v in vals]
        one = single.replace("{sid}", sid).replace("{port}", str(port))

        def send(hvals: list[str], marker: str) -> int:
            body = echo_call(marker)
            hdrs = replace(base_headers("alice", sid), name, hvals)
            if te:
                return status_of(raw_http(port, head(port, hdrs, b""), chunked(body)))
            if name.lower() == "content-length":
                return status_of(raw_http(port, head(port, hdrs, body), body))
            return status_of(raw_http(port, head(port, hdrs, body), body))

        m1 = mark()
        st = send([one], m1)
        control(st == 200 and g.received("pub", m1), f"the request with one {name} got {st} / was not forwarded")
        m2 = mark()
        st = send(vals, m2)
        hold(not g.received("pub", m2), f"two {name} headers: the call was forwarded (HTTP {st})")
        hold(st == 400, f"two {name} headers got HTTP {st}, not 400")
        return f"one {name}: 200 forwarded; two: 400, not forwarded"

    return run


for _name, _single, _values, _te in [
    ("Authorization", f"Bearer {key('alice')}", [f"Bearer {key('alice')}", f"Bearer {key('bob')}"], False),
    ("Mcp-Session-Id", "{sid}", ["{sid}", "{sid2}"], False),
    ("Mcp-Protocol-Version", "2025-11-25", ["2025-11-25", "2025-06-18"], False),
    ("Host", "127.0.0.1:{port}", ["127.0.0.1:{port}", "evil.example"], False),
    ("Origin", "http://127.0.0.1:{port}", ["http://127.0.0.1:{port}", "http://evil.example"], False),
    ("Content-Type", "application/json", ["application/json", "text/plain"], False),
    ("Mcp-Method", "tools/call", ["tools/call", "ping"], False),
    ("Mcp-Name", "pub__echo", ["pub__echo", "pub__secret"], False),
    ("Cookie", "a=1", ["a=1", "b=2"], False),
    ("Transfer-Encoding", "chunked", ["chunked", "chunked"], True),
]:
    attempt(CLS, f"dup-{_name.lower()}", f"two {_name} headers are refused with 400, nothing forwarded")(
        dup_case(_name, _single, _values, _te)
    )


@attempt(CLS, "dup-content-length", "two Content-Length headers are refused with 400, nothing forwarded")
async def dup_content_length(ctx: Ctx) -> str:
    g = ctx.g
    port = g.gw.port
    async with Raw(g, linger=True) as raw:
        sid = await raw.open("alice")
    m1, m2 = mark(), mark()
    body = echo_call(m1)
    st = status_of(raw_http(port, head(port, base_headers("alice", sid), body), body))
    control(st == 200 and g.received("pub", m1), f"one Content-Length got {st}")
    body = echo_call(m2)
    hdrs = [*base_headers("alice", sid), ("Content-Length", str(len(body))), ("Content-Length", str(len(body) + 8))]
    st = status_of(raw_http(port, head(port, hdrs, body), body + b"        "))
    hold(not g.received("pub", m2), f"two Content-Length: forwarded (HTTP {st})")
    hold(st == 400, f"two Content-Length got HTTP {st}")
    return "400, not forwarded"


# --- session hijack --------------------------------------------------------------------------------------------


async def alive(raw: Raw, agent: str, sid: str) -> bool:
    r = await raw.call(agent, sid, "ping")
    return r.status_code == 200 and "result" in answer(r)


@attempt(CLS, "hijack-delete-dup", "DELETE with [victim's id, own id] does not end the victim's session")
async def hijack_delete_dup(ctx: Ctx) -> str:
    g = ctx.g
    async with Raw(g) as raw:
        a, b, b2 = await raw.open("alice"), await raw.open("bob"), await raw.open("bob")
        r = await raw.http.delete(g.url, headers=headers("bob", b2))
        control(r.status_code in (200, 204) and not await alive(raw, "bob", b2), "bob cannot end his own session")
        h = [(k, v) for k, v in headers("bob").items()] + [
            ("Mcp-Session-Id", a),
            ("Mcp-Session-Id", b),
            ("Mcp-Protocol-Version", "2025-11-25"),
        ]
        r = await raw.http.delete(g.url, headers=h)
        hold(await alive(raw, "alice", a), f"alice's session was ended by bob (HTTP {r.status_code})")
        hold(r.status_code == 400, f"the request got HTTP {r.status_code}, not 400")
    return "alice's session lives; 400"


@attempt(CLS, "hijack-get-dup", "GET with [victim's id, own id] does not open the victim's stream")
async def hijack_get_dup(ctx: Ctx) -> str:
    g = ctx.g
    port = g.gw.port
    async with Raw(g, linger=True) as raw:
        a, b = await raw.open("alice"), await raw.open("bob")
    h = [
        ("Authorization", f"Bearer {key('bob')}"),
        ("Accept", "text/event-stream"),
        ("Mcp-Protocol-Version", "2025-11-25"),
    ]
    got = raw_http(port, head(port, [*h, ("Mcp-Session-Id", b)], b"", method="GET", length=False), read_timeout=2)
    control(status_of(got) == 200, f"bob's own stream got {status_of(got)}")
    got = raw_http(
        port,
        head(port, [*h, ("Mcp-Session-Id", a), ("Mcp-Session-Id", b)], b"", method="GET", length=False),
        read_timeout=2,
    )
    hold(status_of(got) != 200, "bob opened a stream with alice's id first")
    hold(status_of(got) == 400, f"got HTTP {status_of(got)}, not 400")
    return "400"


@attempt(CLS, "hijack-post-dup", "POST with [victim's id, own id] does not act in the victim's session")
async def hijack_post_dup(ctx: Ctx) -> str:
    g = ctx.g
    async with Raw(g) as raw:
        a, b = await raw.open("alice"), await raw.open("bob")
        m1, m2 = mark(), mark()
        r = await raw.post("bob", b, echo_call(m1))
        control(ok_result(r) and g.received("pub", m1), "bob's own call failed")
        h = [(k, v) for k, v in headers("bob").items()] + [
            ("Mcp-Session-Id", a),
            ("Mcp-Session-Id", b),
            ("Mcp-Protocol-Version", "2025-11-25"),
        ]
        r = await raw.http.post(g.url, content=echo_call(m2), headers=h)
        hold(not g.received("pub", m2), f"forwarded (HTTP {r.status_code})")
        hold(r.status_code == 400, f"HTTP {r.status_code}, not 400")
    return "400, not forwarded"


@attempt(CLS, "hijack-other-id", "another agent's session id (alone) is answered like an unknown one")
async def hijack_other_id(ctx: Ctx) -> str:
    g = ctx.g
    async with Raw(g) as raw:
        a = await raw.open("alice")
        m1, m2 = mark(), mark()
        r = await raw.post("alice", a, echo_call(m1))
        control(ok_result(r) and g.received("pub", m1), "alice's own call failed")
        unknown = await raw.post("bob", "0" * 32, echo_call(mark()))
        r = await raw.post("bob", a, echo_call(m2))
        hold(not g.received("pub", m2), "bob's call in alice's session was forwarded")
        hold(r.status_code == unknown.status_code, f"HTTP {r.status_code} vs {unknown.status_code} for an unknown id")
        d = await raw.http.delete(g.url, headers=headers("bob", a))
        hold(await alive(raw, "alice", a), f"bob's DELETE ended alice's session ({d.status_code})")
        async with raw.http.stream("GET", g.url, headers={**headers("bob", a), "Accept": "text/event-stream"}) as s:
            hold(s.status_code != 200, "bob opened alice's standalone stream")
    return f"answered {r.status_code} like an unknown id; DELETE and GET refused"


@attempt(CLS, "cross-endpoint-session", "a session opened on /mcp/pub cannot be used by another agent on /mcp")
async def cross_endpoint(ctx: Ctx) -> str:
    g = ctx.g
    async with Raw(g) as raw:
        a = await raw.open("alice", "/mcp/pub")
        m1, m2 = mark(), mark()
        r = await raw.post("alice", a, rpc(3, "tools/call", {"name": "echo", "arguments": {"text": m1}}), "/mcp/pub")
        control(ok_result(r) and g.received("pub", m1), "alice's call on /mcp/pub failed")
        r = await raw.post("bob", a, echo_call(m2))
        hold(not g.received("pub", m2), "bob used alice's /mcp/pub session on /mcp")
        r = await raw.post("bob", a, rpc(4, "tools/call", {"name": "echo", "arguments": {"text": m2}}), "/mcp/pub")
        hold(not g.received("pub", m2), "bob used alice's /mcp/pub session")
    return "refused"


# --- malformed JSON-RPC ----------------------------------------------------------------------------------------


def malformed(body_of: str):
    async def run(ctx: Ctx) -> str:
        g = ctx.g
        async with Raw(g) as raw:
            sid = await raw.open("alice")
            m = mark()
            r = await raw.post("alice", sid, body_of.replace("MARK", m).encode())
            hold(not g.received("pub", m), f"forwarded (HTTP {r.status_code})")
            hold(r.status_code < 500, f"HTTP {r.status_code}")
            leaked = leaks(r.text)
            hold(leaked is None, f"internal text reached the agent: {leaked}")
            m2 = mark()
            r2 = await raw.post("alice", sid, echo_call(m2))
            control(ok_result(r2) and g.received("pub", m2), "a good call on the same session then failed")
        return f"HTTP {r.status_code} {answer(r).get('error', {}).get('code', '')}, not forwarded; session still serves"

    return run


_ECHO = '"method": "tools/call", "params": {"name": "pub__echo", "arguments": {"text": "MARK"}}'
for _id, _title, _body in [
    ("bad-json", "truncated JSON", '{"jsonrpc": "2.0", "id": 1, ' + _ECHO[:-1]),
    (
        "bad-name-type",
        "a tool name that is a number",
        '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 123, "arguments": {"text": "MARK"}}}',
    ),
    ("bad-id-object", "an id that is an object", '{"jsonrpc": "2.0", "id": {"a": 1}, ' + _ECHO + "}"),
    ("bad-jsonrpc-version", "jsonrpc 1.0", '{"jsonrpc": "1.0", "id": 1, ' + _ECHO + "}"),
    (
        "bad-params-list",
        "params as a list",
        '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ["pub__echo", {"text": "MARK"}]}',
    ),
    ("bad-nan", "a NaN literal", '{"jsonrpc": "2.0", "id": NaN, ' + _ECHO + "}"),
    (
        "bad-deep-json",
        "100,000 nested arrays",
        '{"jsonrpc": "2.0", "id": 1, ' + _ECHO[:-1] + ', "x": ' + "[" * 100000 + "]" * 100000 + "}}",
    ),
    (
        "bad-method-type",
        "a method that is a list",
        '{"jsonrpc": "2.0", "id": 1, "method": ["tools/call"], '
        '"params": {"name": "pub__echo", "arguments": {"text": "MARK"}}}',
    ),
]:
    attempt(CLS, _id, f"malformed JSON-RPC ({_title}): a protocol error, nothing forwarded, nothing leaked")(
        malformed(_body)
    )


@attempt(CLS, "batch-hidden", "a batch cannot carry a call to a hidden tool or a denied call past the checks")
async def batch_hidden(ctx: Ctx) -> str:
    g = ctx.g
    async with Raw(g) as raw:
        sid = await raw.open("alice")
        m0, m1, m2, m3 = mark(), mark(), mark(), mark()
        r = await raw.post("alice", sid, echo_call(m0))
        control(ok_result(r) and g.received("pub", m0), "a single allowed call failed")
        r = await raw.post(
            "alice", sid, rpc(5, "tools/call", {"name": "pub__echo", "arguments": {"command": f"ls; {m3}"}})
        )
        control(not g.received("pub", m3), "the denied call alone was forwarded (the deny rule does not work)")
        batch = [
            orjson.loads(echo_call(m1, 1)),
            orjson.loads(rpc(2, "tools/call", {"name": "pub__secret", "arguments": {"text": m2}})),
            orjson.loads(rpc(3, "tools/call", {"name": "pub__echo", "arguments": {"command": f"ls; {m3}"}})),
        ]
        r = await raw.post("alice", sid, json.dumps(batch).encode())
        hold(not g.received("pub", m2), "the hidden tool's call in a batch was forwarded")
        hold(not g.received("pub", m3), "the denied call in a batch was forwarded")
        hold(r.status_code < 500, f"HTTP {r.status_code}")
        hold(leaks(r.text) is None, f"internal text reached the agent: {leaks(r.text)}")
    return f"HTTP {r.status_code}; nothing past the checks"


# --- bodies ----------------------------------------------------------------------------------------------------


def padded_call(marker: str, size: int) -> bytes:
    body = echo_call(marker)
    pad = size - len(body) - len(', "pad": ""')
    return body[:-1] + b', "pad": "' + b"p" * max(pad, 0) + b'"}'


@attempt(CLS, "oversize-body", "a body over max_request_bytes gets 413 and is not forwarded")
async def oversize(ctx: Ctx) -> str:
    g = ctx.g
    async with Raw(g) as raw:
        sid = await raw.open("alice")
        m1, m2 = mark(), mark()
        r = await raw.post("alice", sid, padded_call(m1, LIMIT - 1000))
        control(ok_result(r) and g.received("pub", m1), f"a body under the limit failed: {r.status_code}")
        r = await raw.post("alice", sid, padded_call(m2, LIMIT + 1000))
        hold(not g.received("pub", m2), "forwarded")
        hold(r.status_code == 413, f"HTTP {r.status_code}")
    return "413"


@attempt(CLS, "oversize-chunked", "a chunked body over max_request_bytes (no Content-Length) is refused")
async def oversize_chunked(ctx: Ctx) -> str:
    g = ctx.g
    port = g.gw.port
    async with Raw(g, linger=True) as raw:
        sid = await raw.open("alice")
    m1, m2 = mark(), mark()
    h = [*base_headers("alice", sid), ("Transfer-Encoding", "chunked")]
    st = status_of(raw_http(port, head(port, h, b""), chunked(padded_call(m1, 2000))))
    control(st == 200 and g.received("pub", m1), f"a small chunked body got {st}")
    st = status_of(raw_http(port, head(port, h, b""), chunked(padded_call(m2, LIMIT * 4))))
    hold(not g.received("pub", m2), "forwarded")
    hold(st == 413, f"HTTP {st}")
    return "413"


@attempt(
    CLS, "cl-and-te", "a body framed by both Content-Length and Transfer-Encoding is refused (no desync behind a proxy)"
)
async def cl_and_te(ctx: Ctx) -> str:
    g = ctx.g
    port = g.gw.port
    async with Raw(g, linger=True) as raw:
        sid = await raw.open("alice")
    m1, m2 = mark(), mark()
    h = [*base_headers("alice", sid), ("Transfer-Encoding", "chunked")]
    st = status_of(raw_http(port, head(port, h, b""), chunked(echo_call(m1))))
    control(st == 200 and g.received("pub", m1), f"a chunked body got {st}")
    framed = chunked(echo_call(m2))
    h = [*base_headers("alice", sid), ("Content-Length", str(len(framed))), ("Transfer-Encoding", "chunked")]
    st = status_of(raw_http(port, head(port, h, b""), framed))
    hold(not g.received("pub", m2), f"forwarded (HTTP {st})")
    hold(st == 400, f"HTTP {st}")
    return "400, not forwarded"


# --- admin endpoints -------------------------------------------------------------------------------------------


@attempt(CLS, "admin-not-on-agent-port", "/metrics and /readyz are not served on the agents' port")
async def admin_port(ctx: Ctx) -> str:
    g = ctx.g
    if g.admin == g.base:
        raise NotYet("no admin listener (RunningGateway.admin_base)")
    for path in ("/metrics", "/readyz"):
        r = httpx2.get(g.admin + path, timeout=10)
        control(r.status_code == 200, f"{path} on the admin listener got {r.status_code}")
        for auth in (None, "alice"):
            h = {"Authorization": f"Bearer {key(auth)}"} if auth else {}
            r = httpx2.get(g.base + path, headers=h, timeout=10)
            hold(r.status_code == 404, f"{path} on the agents' port got {r.status_code}")
            hold("alice" not in r.text and "pub" not in r.text, f"{path} on the agents' port names agents or tools")
    return "404 on the agents' port"


@attempt(CLS, "host-rebinding", "a foreign Host or Origin is refused, nothing forwarded")
async def host_rebinding(ctx: Ctx) -> str:
    g = ctx.g
    async with Raw(g) as raw:
        sid = await raw.open("alice")
        m1, m2, m3 = mark(), mark(), mark()
        r = await raw.post("alice", sid, echo_call(m1), Origin=f"http://127.0.0.1:{g.gw.port}")
        control(ok_result(r) and g.received("pub", m1), "a good Origin failed")
        r1 = await raw.post("alice", sid, echo_call(m2), Host="evil.example")
        r2 = await raw.post("alice", sid, echo_call(m3), Origin="http://evil.example")
        hold(not g.received("pub", m2) and not g.received("pub", m3), "forwarded")
        hold(r1.status_code in (400, 421) and r2.status_code == 403, f"HTTP {r1.status_code} / {r2.status_code}")
    return f"{r1.status_code} / {r2.status_code}"


@attempt(CLS, "dup-session-id-case", "two session-id headers spelt in different case count as two: 400")
async def dup_case_spelling(ctx: Ctx) -> str:
    g = ctx.g
    async with Raw(g) as raw:
        a, b = await raw.open("alice"), await raw.open("bob")
        m = mark()
        h = [(k, v) for k, v in headers("bob").items()] + [
            ("mcp-session-id", a),
            ("MCP-SESSION-ID", b),
            ("Mcp-Protocol-Version", "2025-11-25"),
        ]
        control(await alive(raw, "alice", a), "alice's session does not answer")
        r = await raw.http.post(g.url, content=echo_call(m), headers=h)
        hold(not g.received("pub", m), f"forwarded (HTTP {r.status_code})")
        hold(r.status_code == 400, f"HTTP {r.status_code}")
    return "400"


@attempt(CLS, "reinit-other-session", "an initialize carrying another agent's session id changes nothing of it")
async def reinit_other(ctx: Ctx) -> str:
    g = ctx.g
    init = rpc(
        1,
        "initialize",
        {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "mallory", "version": "1"}},
    )
    async with Raw(g) as raw:
        a = await raw.open("alice")
        control(await alive(raw, "alice", a), "alice's session does not answer")
        r = await raw.http.post(g.url, content=init, headers=headers("bob", a))
        hold(r.headers.get("mcp-session-id") != a, "bob was handed alice's session")
        m = mark()
        r2 = await raw.post("alice", a, echo_call(m))
        hold(ok_result(r2) and g.received("pub", m), "alice's session stopped working")
    return f"HTTP {r.status_code}; alice's session unharmed"


@attempt(CLS, "mcp-name-mismatch", "2026 era: Mcp-Name naming an allowed tool cannot carry a body calling a hidden one")
async def name_mismatch(ctx: Ctx) -> str:
    g = ctx.g
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "s", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }

    def call(name: str, marker: str) -> bytes:
        return json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 4,
                "method": "tools/call",
                "params": {"name": name, "arguments": {"text": marker}, "_meta": meta},
            }
        ).encode()

    def h(name: str) -> dict[str, str]:
        return {**headers("alice"), "Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": name}

    m1, m2, m3 = mark(), mark(), mark()
    async with Raw(g) as raw:
        r = await raw.http.post(g.url, content=call("pub__echo", m1), headers=h("pub__echo"))
        control(ok_result(r) and g.received("pub", m1), f"a consistent 2026-era call failed: {r.text[:120]}")
        r = await raw.http.post(g.url, content=call("pub__secret", m2), headers=h("pub__echo"))
        hold(not g.received("pub", m2), "the hidden tool named in the body was called")
        r = await raw.http.post(g.url, content=call("pub__echo", m3), headers=h("pub__secret"))
        hold(r.status_code < 500, f"HTTP {r.status_code}")
    return f"HTTP {r.status_code}; the body's hidden tool was not called"
