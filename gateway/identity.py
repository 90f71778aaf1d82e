"""Who is calling: API keys and signed JWTs mapped to an agent identity.

Keys are stored only as SHA-256 digests; a presented key is hashed and compared in constant time.
Verified JWTs are cached until they expire, so the hot path pays for a signature check once per token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import orjson

from gateway.config import IdentityConfig, JwtConfig


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    team: str
    roles: tuple[str, ...]
    auth: str  # "api_key" | "jwt" | "anonymous"
    claims: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    fingerprint: str = ""
    """Stable digest of the claims: caches keyed on identity use it instead of the claims themselves."""

    def as_input(self) -> dict[str, Any]:
        return {"id": self.id, "team": self.team, "roles": list(self.roles), "auth": self.auth, "claims": self.claims}


class AuthError(Exception):
    """Authentication failed; ``reason`` is a bounded metric label, ``detail`` is safe to show the caller."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


_JWT_CACHE_SIZE = 4096


class Authenticator:
    def __init__(self, cfg: IdentityConfig, base_dir: Path):
        self._keys: dict[bytes, tuple[bytes, Agent]] = {}
        for k in cfg.api_keys:
            digest = bytes.fromhex(k.sha256)
            self._keys[digest] = (digest, Agent(k.agent, k.team, tuple(k.roles), "api_key"))
        self._anonymous = (
            Agent(cfg.anonymous.agent, cfg.anonymous.team, tuple(cfg.anonymous.roles), "anonymous")
            if cfg.anonymous
            else None
        )
        self._jwt = _JwtVerifier(cfg.jwt, base_dir) if cfg.jwt else None
        self.jwt_issuer = cfg.jwt.issuer if cfg.jwt else None

    def authenticate(self, authorization: str | None) -> Agent:
        if not authorization:
            if self._anonymous is not None:
                return self._anonymous
            raise AuthError("missing", "authentication required: send Authorization: Bearer <key or token>")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("malformed", "the Authorization header must be 'Bearer <key or token>'")
        if self._jwt is not None and token.count(".") == 2:
            return self._jwt.verify(token)
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        entry = self._keys.get(digest)
        # The lookup is keyed by a digest of the secret; the final comparison is constant-time regardless.
        if entry is None or not hmac.compare_digest(entry[0], digest):
            raise AuthError("bad_key", "invalid API key")
        return entry[1]


class _JwtVerifier:
    def __init__(self, cfg: JwtConfig, base_dir: Path):
        self._cfg = cfg
        self._keys: dict[str | None, Any] = {}
        if cfg.jwks_file:
            path = Path(cfg.jwks_file)
            path = path if path.is_absolute() else base_dir / path
            jwks = jwt.PyJWKSet.from_dict(orjson.loads(path.read_bytes()))
            for k in jwks.keys:
                self._keys[k.key_id] = k.key
            self._algorithms = ["RS256", "ES256"]
        else:
            self._keys[None] = os.environ[cfg.hs256_secret_env or ""].encode()
            self._algorithms = ["HS256"]
        self._cache: OrderedDict[str, tuple[float, Agent]] = OrderedDict()

    def verify(self, token: str) -> Agent:
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None:
            if hit[0] > now:
                return hit[1]
            del self._cache[token]
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.get(header.get("kid")) if len(self._keys) > 1 else next(iter(self._keys.values()))
            if key is None:
                raise AuthError("bad_token", "token signed with an unknown key id")
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._cfg.audience,
                issuer=self._cfg.issuer,
                leeway=self._cfg.leeway_s,
                options={"require": ["exp", "iss", "aud", self._cfg.agent_claim]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("expired", "token expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("bad_audience", "token audience is not this gateway") from None
        except jwt.InvalidIssuerError:
            raise AuthError("bad_issuer", "token issuer is not trusted") from None
        except jwt.PyJWTError as exc:
            raise AuthError("bad_token", f"invalid token: {exc}") from None
        agent_id = claims.get(self._cfg.agent_claim)
        team = claims.get(self._cfg.team_claim, "")
        roles = claims.get(self._cfg.roles_claim, [])
        if not isinstance(agent_id, str) or not agent_id:
            raise AuthError("bad_token", f"claim {self._cfg.agent_claim!r} must be a non-empty string")
        if not isinstance(team, str):
            raise AuthError("bad_token", f"claim {self._cfg.team_claim!r} must be a string")
        if isinstance(roles, str):
            roles = roles.split()
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AuthError("bad_token", f"claim {self._cfg.roles_claim!r} must be a list of strings")
        fingerprint = hashlib.sha256(orjson.dumps(claims, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
        agent = Agent(agent_id, team, tuple(roles), "jwt", claims, fingerprint)
        self._cache[token] = (float(claims["exp"]) + self._cfg.leeway_s, agent)
        if len(self._cache) > _JWT_CACHE_SIZE:
            self._cache.popitem(last=False)
        return agent
