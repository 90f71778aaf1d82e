"""Who is calling: API keys and signed JWTs mapped to an agent identity.

Keys are stored only as SHA-256 digests; a presented key is hashed and compared in constant time.
Verified JWTs are cached until they expire, so the hot path pays for a signature check once per token.

Any credential gives either an identity or an ``AuthError`` (a 401 with a recorded reason), never an exception
of another kind: a signature proves who made a claim set, not that its content is sane. The claims of a verified
token are parsed a second time, strictly (UTF-8, no duplicate names, integers within 64 bits, finite numbers,
bounded depth), because they go whole into the policy input, the audit log and the cache fingerprint.

The identity tables (API keys, the anonymous identity, the JWT verifier) live in one immutable ``IdentityTable``
that ``Authenticator.swap`` replaces in one assignment: a reload (``gateway.identity_reload``) never leaves a
request seeing half of an old table and half of a new one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from gateway.config import IdentityConfig, JwtConfig
from gateway.names import MAX_NAME_CHARS, parse_roles, unprintable

if TYPE_CHECKING:  # PyJWT and cryptography (~3 MB) are imported only by a gateway configured with [identity.jwt]
    import jwt

log = logging.getLogger("gateway.identity")

MAX_CREDENTIAL_CHARS = 16384
"""A bearer credential longer than this is refused unread (real JWTs are a few KiB; keys are short)."""
MAX_CLAIM_DEPTH = 16
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


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


class _ClaimsError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _ClaimsError("a claim name appears twice")
    return out


def _bounded_int(text: str) -> int:
    value = int(text)
    if not _INT_MIN <= value <= _INT_MAX:
        raise _ClaimsError("an integer is beyond 64 bits")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _ClaimsError("a number is out of range")
    return value


def _no_constant(text: str) -> Any:
    raise _ClaimsError(f"{text} is not JSON")


def _check_tree(value: Any, depth: int = 0) -> None:
    if depth > MAX_CLAIM_DEPTH:
        raise _ClaimsError(f"claims are nested deeper than {MAX_CLAIM_DEPTH} levels")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _ClaimsError("a string holds a lone surrogate") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_tree(k, depth + 1)
            _check_tree(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_tree(v, depth + 1)


def strict_claims(token: str) -> dict[str, Any]:
    """The payload of a (verified) compact JWS, parsed so that every reader agrees on it: strict UTF-8, no
    duplicate names (which one wins differs between parsers), integers within 64 bits and finite numbers
    (what the audit log, the policy engines and the fingerprint can carry exactly), bounded depth."""
    segment = token.split(".")[1]
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        claims = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_int=_bounded_int,
            parse_float=_finite_float,
            parse_constant=_no_constant,
        )
    except _ClaimsError:
        raise
    except (binascii.Error, UnicodeDecodeError, ValueError, RecursionError):
        raise _ClaimsError("the payload is not a UTF-8 JSON object") from None
    if not isinstance(claims, dict):
        raise _ClaimsError("the payload is not a JSON object")
    _check_tree(claims)
    return claims


_JWT_CACHE_SIZE = 4096


@dataclass(frozen=True)
class IdentityTable:
    """Everything one authentication reads, built and validated whole before it serves (see module doc)."""

    keys: dict[bytes, tuple[bytes, Agent]]
    anonymous: Agent | None
    jwt: _JwtVerifier | None

    @classmethod
    def build(cls, cfg: IdentityConfig, base_dir: Path) -> IdentityTable:
        """Raises ValueError/OSError/KeyError on a table that cannot serve (unreadable JWKS, unset secret)."""
        keys = {}
        for k in cfg.api_keys:
            digest = bytes.fromhex(k.sha256)
            keys[digest] = (digest, Agent(k.agent, k.team, tuple(k.roles), "api_key"))
        anonymous = (
            Agent(cfg.anonymous.agent, cfg.anonymous.team, tuple(cfg.anonymous.roles), "anonymous")
            if cfg.anonymous
            else None
        )
        return cls(keys, anonymous, _JwtVerifier(cfg.jwt, base_dir) if cfg.jwt else None)


class Authenticator:
    def __init__(self, cfg: IdentityConfig, base_dir: Path):
        self._table = IdentityTable.build(cfg, base_dir)

    @property
    def jwt_issuer(self) -> str | None:
        verifier = self._table.jwt
        return verifier.issuer if verifier is not None else None

    @property
    def table(self) -> IdentityTable:
        return self._table

    def swap(self, table: IdentityTable) -> None:
        """Serve ``table`` from the next request on (one reference assignment: atomic for every reader)."""
        self._table = table

    def authenticate(self, authorization: str | None) -> Agent:
        table = self._table  # one table for the whole request, whatever a reload does meanwhile
        if not authorization:
            if table.anonymous is not None:
                return table.anonymous
            raise AuthError("missing", "authentication required: send Authorization: Bearer <key or token>")
        if len(authorization) > MAX_CREDENTIAL_CHARS:
            raise AuthError("malformed", f"the Authorization header is longer than {MAX_CREDENTIAL_CHARS} characters")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("malformed", "the Authorization header must be 'Bearer <key or token>'")
        if table.jwt is not None and token.count(".") == 2:
            try:
                return table.jwt.verify(token)
            except AuthError:
                raise
            except Exception as exc:  # fail closed: a credential never turns into a 500
                log.warning("token refused by an unexpected %s while verifying it", type(exc).__name__)
                raise AuthError("bad_token", "invalid token") from None
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        entry = table.keys.get(digest)
        # The lookup is keyed by a digest of the secret; the final comparison is constant-time regardless.
        if entry is None or not hmac.compare_digest(entry[0], digest):
            raise AuthError("bad_key", "invalid API key")
        return entry[1]


def _jwt_errors() -> tuple[tuple[type[Exception], str, str], ...]:
    import jwt

    return (
        (jwt.ExpiredSignatureError, "expired", "token expired"),
        (jwt.InvalidAudienceError, "bad_audience", "token audience is not this gateway"),
        (jwt.InvalidIssuerError, "bad_issuer", "token issuer is not trusted"),
        (jwt.ImmatureSignatureError, "bad_token", "token is not valid yet"),
        (jwt.InvalidSignatureError, "bad_token", "token signature does not verify"),
        (jwt.InvalidAlgorithmError, "bad_token", "token algorithm is not allowed"),
        (jwt.DecodeError, "bad_token", "token cannot be decoded"),
    )


class _JwtVerifier:
    def __init__(self, cfg: JwtConfig, base_dir: Path):
        import jwt

        from gateway.jwks import load_jwks

        self._cfg = cfg
        self.issuer = cfg.issuer
        self._keys: dict[str | None, jwt.PyJWK] = {}
        if cfg.jwks_file:
            path = Path(cfg.jwks_file)
            self._keys.update(load_jwks(path if path.is_absolute() else base_dir / path))
        else:
            secret = os.environ[cfg.hs256_secret_env or ""].encode()
            self._keys[None] = jwt.PyJWK({"kty": "oct", "k": jwt.utils.base64url_encode(secret).decode()}, "HS256")
        self._allowed = {"RS256", "ES256"} if cfg.jwks_file else {"HS256"}
        self._cache: OrderedDict[str, tuple[float, Agent]] = OrderedDict()

    def _key(self, token: str) -> jwt.PyJWK:
        import jwt

        header = jwt.get_unverified_header(token)
        kid = header.get("kid")
        key: jwt.PyJWK | None
        if kid is None and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        else:
            key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise AuthError("bad_token", "token signed with an unknown key id")
        if header.get("alg") != key.algorithm_name or key.algorithm_name not in self._allowed:
            # The key decides the algorithm, never the token: no HS256 keyed with an RSA key's bytes, no none.
            raise AuthError("bad_token", "token algorithm is not allowed")
        return key

    def verify(self, token: str) -> Agent:
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None:
            if hit[0] > now:
                return hit[1]
            del self._cache[token]
        cfg = self._cfg
        import jwt

        try:
            key = self._key(token)
            jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                audience=cfg.audience,
                issuer=cfg.issuer,
                leeway=cfg.leeway_s,
                options={"require": ["exp", "iss", "aud", cfg.agent_claim]},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("bad_token", f"token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            for kind, reason, detail in _jwt_errors():
                if isinstance(exc, kind):
                    raise AuthError(reason, detail) from None
            raise AuthError("bad_token", "invalid token") from None
        try:
            claims = strict_claims(token)
        except _ClaimsError as exc:
            raise AuthError("bad_claims", f"token claims refused: {exc}") from None
        for name in ("exp", "nbf", "iat"):  # PyJWT also takes "123" and 1.5; the audit and policy see these
            if name in claims and (type(claims[name]) is not int):
                raise AuthError("bad_claims", f"token claims refused: {name!r} must be an integer")
        agent_id = claims.get(cfg.agent_claim)
        team = claims.get(cfg.team_claim, "")
        if not isinstance(agent_id, str) or len(agent_id) > MAX_NAME_CHARS or unprintable(agent_id):
            raise AuthError(
                "bad_claims",
                f"claim {cfg.agent_claim!r} must be a non-empty string of at most "
                f"{MAX_NAME_CHARS} characters without whitespace or control characters",
            )
        if not isinstance(team, str) or len(team) > MAX_NAME_CHARS or (team and unprintable(team)):
            raise AuthError(
                "bad_claims",
                f"claim {cfg.team_claim!r} must be a string of at most "
                f"{MAX_NAME_CHARS} characters without whitespace or control characters",
            )
        try:
            roles = parse_roles(claims.get(cfg.roles_claim, []))
        except ValueError as exc:
            raise AuthError("bad_claims", f"claim {cfg.roles_claim!r} {exc}") from None
        fingerprint = hashlib.sha256(orjson.dumps(claims, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
        agent = Agent(agent_id, team, roles, "jwt", claims, fingerprint)
        self._cache[token] = (float(claims["exp"]) + cfg.leeway_s, agent)
        if len(self._cache) > _JWT_CACHE_SIZE:
            self._cache.popitem(last=False)
        return agent
