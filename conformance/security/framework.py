"""What every class of the security suite shares: attempts and their verdicts, the suite's gateway, raw HTTP.

An attempt is an async function that first proves its set-up works (the positive control: the same set-up doing
the allowed thing succeeds, via ``control``), then tries the attack and checks the promise (``hold``). A failed
control is a failure too ("proves nothing"): a broken set-up never passes as "blocked".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx2  # noqa: E402
import orjson  # noqa: E402

from tests.conftest import RunningGateway, free_port, start_gateway  # noqa: E402

POLICY = REPO / "conformance" / "security" / "policy"
FIXTURE = [sys.executable, str(REPO / "tests" / "fixtures" / "sec_upstream.py")]
AGENTS = {"alice": ("sec", ["user"]), "bob": ("sec", ["user"]), "zero": ("sec", []), "root": ("sec", ["admin"])}
PROTOCOL = "2025-11-25"
INTERNAL = re.compile(
    r"Traceback|File \"|\b(TypeError|KeyError|ValueError|AttributeError|IndexError|"
    r"RecursionError|OverflowError|UnicodeError|JSONDecodeError|ValidationError|pydantic|"
    r"orjson|Integer exceeds 64-bit range)\b"
)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def key(agent: str) -> str:
    return f"sec-key-{agent}"


class Breach(Exception):
    """The promise did not hold."""


class Vacuous(Exception):
    """The positive control failed: the set-up is broken, so the attempt proves nothing."""


class NotYet(Exception):
    """What the attempt needs is not in this gateway yet (a setting, a module): counted as a failure."""


def control(ok: object, what: str) -> None:
    if not ok:
        raise Vacuous(what)


def hold(ok: object, what: str) -> None:
    if not ok:
        raise Breach(what)


AttemptFn = Callable[[Any], Awaitable[str | None]]


@dataclass
class Attempt:
    cls: str
    id: str
    title: str
    fn: AttemptFn


REGISTRY: list[Attempt] = []


def attempt(cls: str, aid: str, title: str) -> Callable[[AttemptFn], AttemptFn]:
    def register(fn: AttemptFn) -> AttemptFn:
        REGISTRY.append(Attempt(cls, aid, title, fn))
        return fn

    return register


@dataclass
class Row:
    cls: str
    id: str
    title: str
    passed: bool
    seen: str
    seconds: float


# --- the suite's gateway -------------------------------------------------------------------------------------


def server_fields() -> set[str]:
    from gateway.config import ServerConfig

    return set(ServerConfig.model_fields)


def server_settings(**wanted: Any) -> tuple[str, set[str]]:
    """The [server] lines for the settings this gateway knows, and the names it does not know (yet)."""
    known = server_fields()
    lines = [f"{k} = {json.dumps(v)}" for k, v in wanted.items() if k in known]
    return "\n".join(lines), {k for k in wanted if k not in known}


def sec_upstream(name: str, work: Path, extra: str = "", http_port: int = 0) -> str:
    rec = work / f"{name}.rec"
    if http_port:
        return (
            f'[[upstreams]]\nname = "{name}"\ntransport = "http"\nurl = "http://127.0.0.1:{http_port}/mcp"\n{extra}\n'
        )
    cmd = json.dumps([*FIXTURE, "--name", name])
    return (
        f'[[upstreams]]\nname = "{name}"\ntransport = "stdio"\ncommand = {cmd}\n'
        f'env = {{ RECORD_FILE = "{rec}" }}\n{extra}\n'
    )


def api_keys() -> str:
    out = []
    for agent, (team, roles) in AGENTS.items():
        digest = hashlib.sha256(key(agent).encode()).hexdigest()
        out.append(
            f'[[identity.api_keys]]\nagent = "{agent}"\nteam = "{team}"\nroles = {json.dumps(roles)}\n'
            f'sha256 = "{digest}"\n'
        )
    return "\n".join(out)


@dataclass
class Gateway:
    """One running gateway of the suite and what its attempts need to look at."""

    gw: RunningGateway
    work: Path
    missing_settings: set[str] = field(default_factory=set)
    lingering: list[tuple[str, str, str]] = field(default_factory=list)
    """Sessions attempts keep past their own end (see Raw's ``linger``); ended by ``end_lingering``."""

    def end_lingering(self) -> None:
        for agent, sid, path in self.lingering:
            try:
                httpx2.delete(self.base + path, headers=headers(agent, sid), timeout=10)
            except httpx2.HTTPError:
                pass
        self.lingering.clear()

    @property
    def url(self) -> str:
        return self.gw.url

    @property
    def base(self) -> str:
        return self.gw.base

    @property
    def admin(self) -> str:
        return str(getattr(self.gw, "admin_base", self.gw.base))

    def record(self, upstream: str) -> list[bytes]:
        """Every message the fixture upstream ``upstream`` received, as received."""
        p = self.work / f"{upstream}.rec"
        return p.read_bytes().splitlines() if p.exists() else []

    def received(self, upstream: str, marker: str) -> bool:
        needle = marker.encode()
        return any(needle in line for line in self.record(upstream))

    def audit(self) -> list[dict[str, Any]]:
        return self.gw.audit_records()

    def audit_size(self) -> int:
        return self.gw.audit.stat().st_size if self.gw.audit.exists() else 0

    def log_text(self) -> bytes:
        return self.gw.log.read_bytes()

    def alive(self) -> bool:
        if self.gw.proc.poll() is not None:
            return False
        try:
            return httpx2.get(self.base + "/healthz", timeout=10).status_code == 200
        except httpx2.HTTPError:
            return False

    def rss_mb(self) -> float:
        """Resident memory of the gateway process, MB."""
        for line in Path(f"/proc/{self.gw.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.gw.stop()


def start(
    work: Path,
    upstreams: str,
    server: dict[str, Any] | None = None,
    extra: str = "",
    env: dict[str, str] | None = None,
    identity: str = "",
    policy: Path = POLICY,
    policy_extra: str = "",
) -> Gateway:
    """A gateway with the suite's agents and policy in front of ``upstreams``."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings, missing = server_settings(**(server or {}))
    text = f"""
[server]
listen = "127.0.0.1:{port}"
{settings}

{api_keys()}
{identity}

[policy]
path = "{policy}"
watch = false
{policy_extra}

[audit]
path = "{work / "audit.jsonl"}"

[logging]
format = "text"
calls = true

{extra}

{upstreams}
"""
    return Gateway(start_gateway(work, text, port, ready_timeout=180, env=env), work, missing)


CORE_LIMIT = 1 << 20
"""max_request_bytes of the shared gateway (the protocol class sends bodies just under and over it)."""
JWT_SECRET = "security-suite-hs256-secret-0123456789abcdef"
JWT_ISS, JWT_AUD = "https://idp.sec.example", "mcp-gateway"
_shared: dict[str, Gateway] = {}
_shared_lock = threading.Lock()


def core(root: Path) -> Gateway:
    """The gateway the protocol, hidden, arguments, audit and identity classes share (started once, by whichever
    class comes first): upstreams pub and priv, the suite's API keys and an HS256 JWT issuer."""
    with _shared_lock:
        if "core" not in _shared:
            work = root / "core"
            identity = (
                f'[identity.jwt]\nissuer = "{JWT_ISS}"\naudience = "{JWT_AUD}"\nhs256_secret_env = "SEC_JWT_SECRET"\n'
            )
            _shared["core"] = start(
                work,
                sec_upstream("pub", work) + sec_upstream("priv", work),
                server={"max_request_bytes": CORE_LIMIT},
                identity=identity,
                env={"SEC_JWT_SECRET": JWT_SECRET},
            )
        return _shared["core"]


@dataclass
class CoreCtx:
    """A class's context on the shared core gateway: the gateway stops with the run, a class ends only what it
    left lingering."""

    g: Gateway

    def stop(self) -> None:
        self.g.end_lingering()


def start_core(work: Path) -> CoreCtx:
    return CoreCtx(core(work.parent))


def mark() -> str:
    """A unique marker to find one attempt's traces (audit, logs, answers) by."""
    return "MARK" + secrets.token_hex(6)


def stop_shared() -> None:
    with _shared_lock:
        for g in _shared.values():
            g.stop()
        _shared.clear()


def need(g: Gateway, *settings: str) -> None:
    missing = [s for s in settings if s in g.missing_settings]
    if missing:
        raise NotYet(f"this gateway has no [server] {', '.join(missing)}")


# --- raw HTTP --------------------------------------------------------------------------------------------------


def headers(agent: str | None, sid: str | None = None, **extra: str) -> dict[str, str]:
    h = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if agent is not None:
        h["Authorization"] = f"Bearer {key(agent)}"
    if sid is not None:
        h["Mcp-Session-Id"] = sid
        h["Mcp-Protocol-Version"] = PROTOCOL
    h.update(extra)
    return h


def rpc(rid: Any, method: str, params: dict[str, Any] | None = None) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        msg["params"] = params
    return orjson.dumps(msg)


def messages(resp: httpx2.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a response, framed as JSON or as SSE events."""
    text = resp.text.replace("\r\n", "\n")
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        out = []
        for event in text.split("\n\n"):
            data = "\n".join(line[5:].lstrip() for line in event.splitlines() if line.startswith("data:"))
            if data.strip():
                out.append(json.loads(data))
        return out
    if not text.strip():
        return []
    try:
        v = json.loads(text)
    except ValueError:
        return []
    return v if isinstance(v, list) else [v]


def answer(resp: httpx2.Response) -> dict[str, Any]:
    """The response to our request (the last message carrying an id and a result or error), or {}."""
    for m in reversed(messages(resp)):
        if "result" in m or "error" in m:
            return m
    return {}


def normal(resp: httpx2.Response) -> str:
    """What an agent can tell from an answer, with the request id and per-request UUIDs masked."""
    msgs = []
    for m in messages(resp):
        m = dict(m)
        m.pop("id", None)
        msgs.append(m)
    body = json.dumps(msgs, sort_keys=True) if msgs else resp.text
    return f"{resp.status_code} {resp.headers.get('content-type', '')} " + UUID.sub("<uuid>", body)


def leaks(text: str) -> str | None:
    m = INTERNAL.search(text)
    return m.group(0) if m else None


class Raw:
    """Raw JSON-RPC over HTTP for one gateway: sessions opened by hand, requests the SDK would never send."""

    def __init__(self, g: Gateway, timeout: float = 60, linger: bool = False):
        """``linger``: the sessions it opens outlive it (until the class ends), for attempts that go on using
        them over raw sockets or keep one across attempts."""
        self.g = g
        self.linger = linger
        self.http = httpx2.AsyncClient(timeout=timeout)
        self.rid = 100
        self.opened: list[tuple[str, str, str]] = []

    async def __aenter__(self) -> Raw:
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Ends the sessions it opened (per-agent session caps would otherwise fill up across attempts)."""
        if self.linger:
            self.g.lingering += self.opened
            self.opened = []
        for agent, sid, path in self.opened:
            try:
                await self.http.delete(self.g.base + path, headers=headers(agent, sid), timeout=10)
            except httpx2.HTTPError:
                pass
        await self.http.aclose()

    def next_id(self) -> int:
        self.rid += 1
        return self.rid

    async def open(self, agent: str, path: str = "/mcp") -> str:
        init = rpc(
            1,
            "initialize",
            {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "secsuite", "version": "1"}},
        )
        r = await self.http.post(self.g.base + path, content=init, headers=headers(agent))
        if r.status_code != 200 or "mcp-session-id" not in r.headers:
            raise Vacuous(f"could not open a session for {agent}: {r.status_code} {r.text[:200]}")
        sid = r.headers["mcp-session-id"]
        note = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        r = await self.http.post(self.g.base + path, content=note, headers=headers(agent, sid))
        if r.status_code != 202:
            raise Vacuous(f"initialized notification refused: {r.status_code}")
        self.opened.append((agent, sid, path))
        return sid

    async def post(
        self, agent: str | None, sid: str | None, body: bytes, path: str = "/mcp", **extra: str
    ) -> httpx2.Response:
        return await self.http.post(self.g.base + path, content=body, headers=headers(agent, sid, **extra))

    async def call(
        self,
        agent: str,
        sid: str | None,
        method: str,
        params: dict[str, Any] | None = None,
        path: str = "/mcp",
        rid: Any = None,
    ) -> httpx2.Response:
        return await self.post(agent, sid, rpc(self.next_id() if rid is None else rid, method, params), path)

    async def tool(self, agent: str, sid: str | None, name: str, arguments: Any = None) -> httpx2.Response:
        params: dict[str, Any] = {"name": name}
        if arguments is not None:
            params["arguments"] = arguments
        return await self.call(agent, sid, "tools/call", params)


def ok_result(resp: httpx2.Response) -> bool:
    """A tools/call (or other request) answered with a result that is not a tool error."""
    a = answer(resp)
    return resp.status_code == 200 and "result" in a and not a["result"].get("isError")


def result_text(resp: httpx2.Response) -> str:
    a = answer(resp)
    if "error" in a:
        return str(a["error"].get("message", ""))
    content = (a.get("result") or {}).get("content") or []
    return "".join(str(c.get("text", "")) for c in content if isinstance(c, dict))


def refused(resp: httpx2.Response) -> bool:
    """Not a successful result: an HTTP error, a JSON-RPC error or a tool error."""
    return not ok_result(resp)


def raw_http(port: int, head: bytes, body: bytes = b"", read_timeout: float = 10.0, limit: int = 1 << 20) -> bytes:
    """Sends bytes as they are (duplicated headers, bad framing) and returns what came back before the server
    closed the connection, ``limit`` bytes were read, or the read timed out."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(head + body)
        out = b""
        try:
            while len(out) < limit:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out and out.startswith(b"HTTP/1.1 4"):
                    pass
        except (TimeoutError, OSError):
            pass
        return out


def status_of(raw: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    return int(m.group(1)) if m else 0


def wait_until(predicate: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def metric(g: Gateway, name: str, labels: str = "") -> float:
    text = httpx2.get(g.admin + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and labels in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")
