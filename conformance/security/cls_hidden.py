"""Hidden-item oracles: an item an agent may not see cannot be told apart from one that does not exist.

Alice (role user) may not see upstream ``priv`` at all, nor the tool and prompt ``secret`` or the resource
``sec://pub/secret`` of upstream ``pub``; root (role admin) sees everything, which proves each hidden item
exists. For every request that names an item (tool, prompt, resource, template, completion ref, subscription),
the hidden item's answer must equal the missing item's byte for byte, modulo the request id (and per-request
UUIDs); lists must not show hidden items; notifications about hidden items (list changes, resource updates)
must not reach her; and a hidden item must cause the same kind of work (audit records) as a missing one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conformance.security.framework import (
    CoreCtx as Ctx,
)
from conformance.security.framework import (
    Raw,
    answer,
    attempt,
    control,
    headers,
    hold,
    key,
    normal,
    ok_result,
    start_core,
)

CLS = "hidden"
start = start_core  # the class runs on the shared core gateway


async def same(
    raw: Raw, method: str, hidden: dict[str, Any], missing: dict[str, Any], path: str = "/mcp", agent: str = "alice"
) -> str:
    """Asks for the hidden and the missing item in one fresh session each and compares what the agent sees."""
    names = sorted({v for v in strings(hidden) ^ strings(missing)}, key=len, reverse=True)
    outs = []
    for params in (hidden, missing, hidden):
        sid = await raw.open(agent, path)
        out = normal(await raw.call(agent, sid, method, params, path, rid=9))
        for n in names:  # the name the agent sent comes back in the message: that tells it nothing
            out = out.replace(n, "<name>")
        outs.append(out)
    hold(outs[0] == outs[1], f"hidden and missing differ: {outs[0][:110]!r} vs {outs[1][:110]!r}")
    return outs[1][:100]


def strings(v: Any) -> set[str]:
    if isinstance(v, str):
        return {v}
    if isinstance(v, dict):
        return set().union(*(strings(x) for x in v.values())) if v else set()
    if isinstance(v, list):
        return set().union(*(strings(x) for x in v)) if v else set()
    return set()


def pair(
    aid: str,
    title: str,
    method: str,
    hidden: dict[str, Any],
    missing: dict[str, Any],
    visible: dict[str, Any],
    path: str = "/mcp",
) -> None:
    """One oracle attempt: root gets the hidden item (it exists), alice gets a visible one (the set-up works),
    and alice's answers for the hidden and the missing one are the same."""

    async def run(ctx: Ctx) -> str:
        async with Raw(ctx.g) as raw:
            sid = await raw.open("root", path)
            r = await raw.call("root", sid, method, hidden, path)
            control(ok_result(r), f"root cannot use the hidden item (so it proves nothing): {r.text[:150]}")
            sid = await raw.open("alice", path)
            r = await raw.call("alice", sid, method, visible, path)
            control(ok_result(r), f"alice cannot use the visible item: {r.text[:150]}")
            return await same(raw, method, hidden, missing, path)

    attempt(CLS, aid, title)(run)


def call(name: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "arguments": args}


pair(
    "tool-hidden",
    "tools/call: a hidden tool answers like a missing one",
    "tools/call",
    call("pub__secret"),
    call("pub__nosuch"),
    call("pub__echo", text="hi"),
)
pair(
    "tool-hidden-upstream",
    "tools/call: a tool of a hidden upstream answers like one of a missing upstream",
    "tools/call",
    call("priv__echo", text="hi"),
    call("ghost__echo", text="hi"),
    call("pub__echo", text="hi"),
)
pair(
    "tool-hidden-view",
    "tools/call on /mcp/pub: a hidden tool answers like a missing one",
    "tools/call",
    call("secret"),
    call("nosuch"),
    call("echo", text="hi"),
    "/mcp/pub",
)
pair(
    "prompt-hidden-view",
    "prompts/get on /mcp/pub: a hidden prompt answers like a missing one",
    "prompts/get",
    {"name": "secret"},
    {"name": "nosuch"},
    {"name": "greet"},
    "/mcp/pub",
)
pair(
    "resource-hidden-view",
    "resources/read on /mcp/pub: a hidden resource answers like a missing one",
    "resources/read",
    {"uri": "sec://pub/secret"},
    {"uri": "sec://pub/nosuch"},
    {"uri": "sec://pub/readme"},
    "/mcp/pub",
)
pair(
    "unsubscribe-hidden",
    "resources/unsubscribe on a hidden resource answers like on a missing one",
    "resources/unsubscribe",
    {"uri": "sec://pub/secret"},
    {"uri": "sec://pub/nosuch"},
    {"uri": "sec://pub/readme"},
)
pair(
    "prompt-hidden",
    "prompts/get: a hidden prompt answers like a missing one",
    "prompts/get",
    {"name": "pub__secret"},
    {"name": "pub__nosuch"},
    {"name": "pub__greet"},
)
pair(
    "prompt-hidden-upstream",
    "prompts/get: a prompt of a hidden upstream answers like a missing one",
    "prompts/get",
    {"name": "priv__greet"},
    {"name": "ghost__greet"},
    {"name": "pub__greet"},
)
pair(
    "resource-hidden",
    "resources/read: a hidden resource answers like a missing one",
    "resources/read",
    {"uri": "sec://pub/secret"},
    {"uri": "sec://pub/nosuch"},
    {"uri": "sec://pub/readme"},
)
pair(
    "resource-hidden-upstream",
    "resources/read: a resource of a hidden upstream answers like a missing one",
    "resources/read",
    {"uri": "sec://priv/readme"},
    {"uri": "sec://ghost/readme"},
    {"uri": "sec://pub/readme"},
)
pair(
    "completion-prompt-hidden",
    "completion/complete on a hidden prompt answers like on a missing one",
    "completion/complete",
    {"ref": {"type": "ref/prompt", "name": "pub__secret"}, "argument": {"name": "who", "value": "a"}},
    {"ref": {"type": "ref/prompt", "name": "pub__nosuch"}, "argument": {"name": "who", "value": "a"}},
    {"ref": {"type": "ref/prompt", "name": "pub__greet"}, "argument": {"name": "who", "value": "a"}},
)
pair(
    "completion-prompt-upstream",
    "completion/complete on a hidden upstream's prompt answers like a missing one",
    "completion/complete",
    {"ref": {"type": "ref/prompt", "name": "priv__greet"}, "argument": {"name": "who", "value": "a"}},
    {"ref": {"type": "ref/prompt", "name": "ghost__greet"}, "argument": {"name": "who", "value": "a"}},
    {"ref": {"type": "ref/prompt", "name": "pub__greet"}, "argument": {"name": "who", "value": "a"}},
)
pair(
    "completion-resource-hidden",
    "completion/complete on a hidden resource answers like on a missing one",
    "completion/complete",
    {"ref": {"type": "ref/resource", "uri": "sec://pub/secret"}, "argument": {"name": "path", "value": "a"}},
    {"ref": {"type": "ref/resource", "uri": "sec://pub/nosuch"}, "argument": {"name": "path", "value": "a"}},
    {"ref": {"type": "ref/resource", "uri": "sec://pub/readme"}, "argument": {"name": "path", "value": "a"}},
)
pair(
    "completion-resource-upstream",
    "completion/complete on a hidden upstream's resource answers like a missing one",
    "completion/complete",
    {"ref": {"type": "ref/resource", "uri": "sec://priv/readme"}, "argument": {"name": "path", "value": "a"}},
    {"ref": {"type": "ref/resource", "uri": "sec://ghost/readme"}, "argument": {"name": "path", "value": "a"}},
    {"ref": {"type": "ref/resource", "uri": "sec://pub/readme"}, "argument": {"name": "path", "value": "a"}},
)
pair(
    "subscribe-hidden",
    "resources/subscribe on a hidden resource answers like on a missing one",
    "resources/subscribe",
    {"uri": "sec://pub/secret"},
    {"uri": "sec://pub/nosuch"},
    {"uri": "sec://pub/readme"},
)
pair(
    "subscribe-hidden-upstream",
    "resources/subscribe on a hidden upstream's resource answers like a missing one",
    "resources/subscribe",
    {"uri": "sec://priv/readme"},
    {"uri": "sec://ghost/readme"},
    {"uri": "sec://pub/readme"},
)


@attempt(CLS, "lists-hide", "tools, prompts, resources and templates lists show no hidden item")
async def lists_hide(ctx: Ctx) -> str:
    checks = [
        ("tools/list", "tools", "name", ["pub__echo"], ["pub__secret", "priv__echo"]),
        ("prompts/list", "prompts", "name", ["pub__greet"], ["pub__secret", "priv__greet"]),
        ("resources/list", "resources", "uri", ["sec://pub/readme"], ["sec://pub/secret", "sec://priv/readme"]),
        (
            "resources/templates/list",
            "resourceTemplates",
            "uriTemplate",
            ["sec://pub/files/{path}"],
            ["sec://priv/files/{path}"],
        ),
    ]
    leaked = []
    async with Raw(ctx.g) as raw:
        root = await raw.open("root")
        alice = await raw.open("alice")
        for method, field_, attr, visible, hidden in checks:
            everything = {
                i.get(attr) for i in answer(await raw.call("root", root, method)).get("result", {}).get(field_, [])
            }
            control(set(hidden) <= everything, f"root's {method} lacks {sorted(set(hidden) - everything)}")
            seen = {
                i.get(attr) for i in answer(await raw.call("alice", alice, method)).get("result", {}).get(field_, [])
            }
            control(set(visible) <= seen, f"alice's {method} lacks the visible {visible}")
            leaked += [f"{method}: {h}" for h in hidden if h in seen]
    hold(not leaked, "listed: " + ", ".join(leaked))
    return "only visible items listed"


@attempt(CLS, "upstream-endpoint-hidden", "/mcp/priv (a hidden upstream's endpoint) answers like /mcp/ghost")
async def endpoint_hidden(ctx: Ctx) -> str:
    g = ctx.g
    init = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "s", "version": "1"},
            },
        }
    ).encode()
    async with httpx2.AsyncClient(timeout=30) as http:
        r = await http.post(g.base + "/mcp/priv", content=init, headers=headers("root"))
        control(r.status_code == 200, f"root cannot open /mcp/priv: {r.status_code}")
        a = await http.post(g.base + "/mcp/priv", content=init, headers=headers("alice"))
        b = await http.post(g.base + "/mcp/ghost", content=init, headers=headers("alice"))
    hold(normal(a) == normal(b), f"/mcp/priv {a.status_code} vs /mcp/ghost {b.status_code}")
    return f"both {b.status_code}"


@attempt(CLS, "same-work", "a hidden tool's call leaves the same kind of work (audit records) as a missing one's")
async def same_work(ctx: Ctx) -> str:
    g = ctx.g

    def kinds(records: list[dict[str, Any]]) -> list[str]:
        return [str(r.get("type") or r.get("kind") or r.get("event") or sorted(r)) for r in records]

    async with Raw(g) as raw:
        sid = await raw.open("alice")
        out = {}
        for name in ("pub__secret", "pub__nosuch", "priv__echo", "ghost__echo"):
            before = len(g.audit())
            await raw.tool("alice", sid, name, {})
            await anyio.sleep(0.2)
            out[name] = kinds(g.audit()[before:])
    control(out["pub__nosuch"] or out["pub__secret"], "no audit record at all for either call")
    hold(out["pub__secret"] == out["pub__nosuch"], f"hidden {out['pub__secret']} vs missing {out['pub__nosuch']}")
    hold(
        out["priv__echo"] == out["ghost__echo"], f"hidden upstream {out['priv__echo']} vs missing {out['ghost__echo']}"
    )
    return f"{len(out['pub__nosuch'])} record(s) each"


@attempt(CLS, "tool-hidden-2026", "2026-era (stateless) tools/call: a hidden tool answers like a missing one")
async def hidden_2026(ctx: Ctx) -> str:
    g = ctx.g

    async def outcome(agent: str, name: str) -> str:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key(agent)}"}, timeout=30)
        async with http, Client(streamable_http_client(g.url, http_client=http), mode="auto", cache=None) as c:
            control(c.protocol_version == "2026-07-28", f"the client landed on {c.protocol_version}")
            try:
                r = await c.call_tool(name, {"text": "hi"})
                return f"result error={r.is_error} " + "".join(getattr(x, "text", "") for x in r.content)
            except Exception as exc:  # the answer itself is what we compare
                return f"{type(exc).__name__}: {getattr(exc, 'error', exc)}"

    control((await outcome("root", "pub__secret")).startswith("result error=False"), "root cannot call pub__secret")
    control((await outcome("alice", "pub__echo")).startswith("result error=False"), "alice cannot call pub__echo")
    hidden, missing = await outcome("alice", "pub__secret"), await outcome("alice", "pub__nosuch")
    mask = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|secret|nosuch")
    hold(mask.sub("_", hidden) == mask.sub("_", missing), f"{hidden[:100]!r} vs {missing[:100]!r}")
    return missing[:90]


@dataclass
class Stream:
    """Alice's standalone SSE stream: every notification the gateway sends her session."""

    raw: Raw
    agent: str
    sid: str
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        h = {**headers(self.agent, self.sid), "Accept": "text/event-stream"}
        async with self.raw.http.stream("GET", self.raw.g.url, headers=h, timeout=None) as s:
            task_status.started(s.status_code)
            buf = ""
            async for chunk in s.aiter_text():
                buf += chunk.replace("\r\n", "\n")
                while "\n\n" in buf:
                    event, buf = buf.split("\n\n", 1)
                    data = "\n".join(x[5:].lstrip() for x in event.splitlines() if x.startswith("data:"))
                    if data.strip():
                        self.seen.append(json.loads(data))

    def count(self, method: str, uri: str | None = None) -> int:
        return sum(
            1
            for m in self.seen
            if m.get("method") == method and (uri is None or (m.get("params") or {}).get("uri") == uri)
        )


async def notify(raw: Raw, sid: str, tool: str, method: str, params: dict[str, Any] | None = None) -> None:
    r = await raw.tool("root", sid, tool, {"method": method, "params": params or {}})
    control(ok_result(r), f"root's {tool} failed: {r.text[:150]}")


async def wait_for(pred: Any, seconds: float) -> bool:
    with anyio.move_on_after(seconds):
        while not pred():
            await anyio.sleep(0.05)
        return True
    return bool(pred())


@attempt(CLS, "list-changed-hidden", "a hidden upstream's tools/list_changed does not reach the agent")
async def list_changed_hidden(ctx: Ctx) -> str:
    async with Raw(ctx.g) as raw, anyio.create_task_group() as tg:
        root = await raw.open("root")
        st = Stream(raw, "alice", await raw.open("alice"))
        await raw.call("alice", st.sid, "tools/list")  # the SDK path registers the session with the relay
        status = await tg.start(st.run)
        control(status == 200, f"alice's stream got {status}")
        await anyio.sleep(0.3)
        method = "notifications/tools/list_changed"
        await notify(raw, root, "priv__notify", method)
        await anyio.sleep(1.5)
        leaked = st.count(method)
        await notify(raw, root, "pub__notify", method)
        control(await wait_for(lambda: st.count(method) > leaked, 10), "the visible upstream's list change never came")
        tg.cancel_scope.cancel()
    hold(leaked == 0, "the hidden upstream's list change reached alice")
    return "visible upstream's arrived, hidden one's did not"


@attempt(CLS, "updated-hidden", "resources/updated about a hidden resource does not reach a subscriber of the upstream")
async def updated_hidden(ctx: Ctx) -> str:
    async with Raw(ctx.g) as raw, anyio.create_task_group() as tg:
        root = await raw.open("root")
        r = await raw.call("root", root, "resources/subscribe", {"uri": "sec://pub/secret"})
        control(ok_result(r), "root cannot subscribe to the secret resource")
        alice = await raw.open("alice")
        r = await raw.call("alice", alice, "resources/subscribe", {"uri": "sec://pub/readme"})
        control(ok_result(r), "alice cannot subscribe to a visible resource")
        st = Stream(raw, "alice", alice)
        await raw.call("alice", alice, "tools/list")
        control(await tg.start(st.run) == 200, "alice's stream refused")
        await anyio.sleep(0.3)
        method = "notifications/resources/updated"
        await notify(raw, root, "pub__notify", method, {"uri": "sec://pub/secret"})
        await anyio.sleep(1.5)
        leaked = st.count(method, "sec://pub/secret")
        await notify(raw, root, "pub__notify", method, {"uri": "sec://pub/readme"})
        control(
            await wait_for(lambda: st.count(method, "sec://pub/readme") > 0, 10),
            "the update of the subscribed resource never came",
        )
        tg.cancel_scope.cancel()
    hold(leaked == 0, "alice was told the hidden resource sec://pub/secret changed")
    return "subscribed resource's update arrived, hidden one's did not"


@attempt(
    CLS,
    "unsubscribe-isolation",
    "another agent's subscribe and unsubscribe of the same URI do not end an agent's subscription",
)
async def unsubscribe_isolation(ctx: Ctx) -> str:
    uri = "sec://pub/readme"
    async with Raw(ctx.g) as raw, anyio.create_task_group() as tg:
        root = await raw.open("root")
        alice = await raw.open("alice")
        r = await raw.call("alice", alice, "resources/subscribe", {"uri": uri})
        control(ok_result(r), "alice cannot subscribe")
        st = Stream(raw, "alice", alice)
        await raw.call("alice", alice, "tools/list")
        control(await tg.start(st.run) == 200, "alice's stream refused")
        await anyio.sleep(0.3)
        method = "notifications/resources/updated"
        await notify(raw, root, "pub__notify", method, {"uri": uri})
        control(await wait_for(lambda: st.count(method, uri) > 0, 10), "the first update never came")
        bob = await raw.open("bob")
        for m in ("resources/subscribe", "resources/unsubscribe"):
            control(ok_result(await raw.call("bob", bob, m, {"uri": uri})), f"bob's {m} failed")
        await raw.http.delete(ctx.g.url, headers=headers("bob", bob))
        seen = st.count(method, uri)
        await notify(raw, root, "pub__notify", method, {"uri": uri})
        arrived = await wait_for(lambda: st.count(method, uri) > seen, 5)
        tg.cancel_scope.cancel()
    hold(arrived, "after bob's unsubscribe, alice no longer gets updates")
    return "alice still subscribed"
