"""Identity: every request carries a verified identity, or gets a 401 that is on record; never a 500.

API keys and HS256 JWTs (signed here, by hand, so any claim set can be made: integers beyond 64 bits, 1e400,
odd types, duplicate names, ``alg: none``). A token whose claims the gateway cannot turn into an identity must
give 401 and an ``auth_failure`` audit record; a role string holding Unicode whitespace must not split into
roles (``"user\\u00a0admin"`` is not admin). Controls: the same token with plain claims is accepted, and
``"user admin"`` (an ASCII space) does make its holder admin.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx2

from conformance.security.framework import (
    JWT_AUD,
    JWT_ISS,
    JWT_SECRET,
    Gateway,
    attempt,
    control,
    hold,
    key,
    leaks,
    start_core,
)
from conformance.security.framework import (
    CoreCtx as Ctx,
)

CLS = "identity"
start = start_core  # the class runs on the shared core gateway
SECRET, ISS, AUD = JWT_SECRET, JWT_ISS, JWT_AUD
INIT = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "s", "version": "1"}},
    }
).encode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(payload_json: str, alg: str = "HS256", secret: str = SECRET, header: str | None = None) -> str:
    """A JWT whose payload is exactly the given JSON text, signed with HS256 (or unsigned for alg none)."""
    head = b64((header or json.dumps({"alg": alg, "typ": "JWT"})).encode())
    body = b64(payload_json.encode())
    if alg == "none":
        return f"{head}.{body}."
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "jay",
        "team": "sec",
        "roles": ["user"],
        "iat": now,
        "exp": now + 600,
    }
    c.update(over)
    return c


def payload(extra_json: str = "", **over: Any) -> str:
    text = json.dumps(claims(**over))
    return text[:-1] + (", " + extra_json if extra_json else "") + "}"


async def init(bearer: str | None, raw_header: str | None = None) -> httpx2.Response:
    h = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if bearer is not None:
        h["Authorization"] = f"Bearer {bearer}"
    if raw_header is not None:
        h["Authorization"] = raw_header
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(GW[0].url, content=INIT, headers=h)


GW: list[Gateway] = []


def auth_failures(g: Gateway) -> int:
    return sum(1 for r in g.audit() if r.get("type") == "auth_failure")


async def refused_on_record(g: Gateway, bearer: str | None = None, raw_header: str | None = None) -> str:
    before = auth_failures(g)
    r = await init(bearer, raw_header)
    hold(r.status_code == 401, f"HTTP {r.status_code}")
    hold(leaks(r.text) is None, f"internal text: {leaks(r.text)}")
    hold(auth_failures(g) > before, "401 without an auth_failure record")
    return "401, recorded"


async def with_gw(ctx: Ctx) -> Gateway:
    GW[:] = [ctx.g]
    r = await init(key("alice"))
    control(r.status_code == 200, f"alice's key got {r.status_code}")
    r = await init(token(payload()))
    control(r.status_code == 200, f"a good JWT got {r.status_code}: {r.text[:100]}")
    return ctx.g


def refusal(aid: str, title: str, bearer: str | None = None, raw_header: str | None = None) -> None:
    async def run(ctx: Ctx) -> str:
        g = await with_gw(ctx)
        return await refused_on_record(g, bearer, raw_header)

    attempt(CLS, aid, title)(run)


now = int(time.time())
refusal("no-credentials", "no Authorization: 401, recorded")
refusal("bad-key", "an unknown API key: 401, recorded", "sec-key-mallory")
refusal(
    "two-keys-one-header",
    "two bearer keys in one header: 401, recorded",
    raw_header=f"Bearer {key('alice')}, Bearer {key('root')}",
)
refusal("empty-bearer", "the Bearer scheme with no token: 401, recorded", raw_header="Bearer")
refusal(
    "key-with-trailer",
    "a valid key followed by more words: 401, recorded",
    raw_header=f"Bearer {key('alice')} {key('root')}",
)
refusal("basic-scheme", "the key under the Basic scheme: 401, recorded", raw_header=f"Basic {key('alice')}")
refusal("huge-authorization", "a 60 KB Authorization header: 401 (not 500), recorded", "x" * 60_000)
refusal("alg-none", "an unsigned token (alg none): 401, recorded", token(payload(), alg="none"))
refusal(
    "alg-hs512-header",
    "a token claiming HS512, signed HS256: 401, recorded",
    token(payload(), header='{"alg": "HS512", "typ": "JWT"}'),
)
refusal("wrong-secret", "a token signed with another secret: 401, recorded", token(payload(), secret="other" * 8))
refusal("expired", "an expired token: 401, recorded", token(payload(exp=now - 3600, iat=now - 7200)))
refusal("wrong-audience", "a token for another audience: 401, recorded", token(payload(aud="someone-else")))
refusal("wrong-issuer", "a token from another issuer: 401, recorded", token(payload(iss="https://evil.example")))


def odd_claim(aid: str, title: str, text: str) -> None:
    """A validly signed token with an odd claim: an identity (200) or a recorded 401, never a 500."""

    async def run(ctx: Ctx) -> str:
        g = await with_gw(ctx)
        before = auth_failures(g)
        r = await init(token(text))
        hold(r.status_code in (200, 401), f"HTTP {r.status_code}")
        hold(leaks(r.text) is None, f"internal text: {leaks(r.text)}")
        if r.status_code == 401:
            hold(auth_failures(g) > before, "401 without an auth_failure record")
        hold(g.alive(), "the gateway stopped serving")
        return f"HTTP {r.status_code}"

    attempt(CLS, aid, title)(run)


for _aid, _what, _text in [
    ("claim-exp-2-70", "exp = 2**70", payload().replace(f'"exp": {now + 600}', f'"exp": {2**70}')),
    ("claim-iat-2-70", "iat = 2**70", payload().replace(f'"iat": {now}', f'"iat": {2**70}')),
    ("claim-nbf-neg-2-64", "nbf = -2**64", payload(f'"nbf": {-(2**64)}')),
    ("claim-custom-1e400", "a custom claim 1e400", payload('"x": 1e400')),
    ("claim-custom-2-70", "a custom claim 2**70", payload(f'"x": {2**70}')),
    ("claim-exp-1e400", "exp = 1e400", payload().replace(f'"exp": {now + 600}', '"exp": 1e400')),
    ("claim-exp-string", "exp as a string", payload().replace(f'"exp": {now + 600}', f'"exp": "{now + 600}"')),
    ("claim-sub-list", "sub as a list", payload(sub=["a", "b"])),
    ("claim-sub-2-70", "sub = 2**70", payload().replace('"sub": "jay"', f'"sub": {2**70}')),
    ("claim-roles-number", "roles as a number", payload(roles=12345)),
    ("claim-roles-object", "roles as an object", payload(roles={"admin": True})),
    ("claim-team-null", "team null", payload(team=None)),
    ("claim-dup-sub", "two sub claims", payload('"sub": "root"')),
    ("claim-deep", "a claim nested 5,000 levels", payload('"x": ' + "[" * 5000 + "]" * 5000)),
]:
    odd_claim(_aid, f"a signed token with {_what}: an identity or a recorded 401, never a 500", _text)


async def is_admin(bearer: str) -> bool | None:
    """Whether the holder can call pub__secret (admin only); None when the token is refused."""
    g = GW[0]
    http = httpx2.AsyncClient(timeout=30)
    async with http:
        r = await http.post(
            g.url,
            content=INIT,
            headers={
                "Authorization": f"Bearer {bearer}",
                "Accept": "application/json, text/event-stream",
                "Content-Type": "application/json",
            },
        )
        if r.status_code == 401:
            return None
        sid = r.headers["mcp-session-id"]
        h = {
            "Authorization": f"Bearer {bearer}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "Mcp-Session-Id": sid,
            "Mcp-Protocol-Version": "2025-11-25",
        }
        await http.post(g.url, content=b'{"jsonrpc": "2.0", "method": "notifications/initialized"}', headers=h)
        r = await http.post(
            g.url,
            headers=h,
            content=json.dumps(
                {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "pub__secret"}}
            ).encode(),
        )
        out = json.loads(r.text.split("data:", 1)[-1]) if "data:" in r.text else r.json()
        return "result" in out and not out["result"].get("isError")


def role_split(aid: str, roles: str) -> None:
    async def run(ctx: Ctx) -> str:
        await with_gw(ctx)
        control(await is_admin(token(payload(roles="user admin"))) is True, "roles 'user admin' is not admin")
        control(await is_admin(token(payload(roles="user"))) is False, "roles 'user' is admin")
        got = await is_admin(token(payload(roles=roles)))
        hold(got is not True, f"roles {roles!r} made its holder admin")
        return "refused (401)" if got is None else "not admin"

    attempt(CLS, aid, f"roles {roles!r} (Unicode whitespace) do not split into admin")(run)


for _aid, _roles in [
    ("role-nbsp", "user\u00a0admin"),
    ("role-em-space", "user\u2003admin"),
    ("role-ideographic-space", "user\u3000admin"),
    ("role-unit-separator", "user\x1fadmin"),
    ("role-next-line", "user\u0085admin"),
    ("role-line-separator", "user\u2028admin"),
]:
    role_split(_aid, _roles)
