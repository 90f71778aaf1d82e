"""Reading a JWKS file: kept apart from identity so the config's checks can use it without a circular import."""

from __future__ import annotations

from pathlib import Path

import jwt
import orjson


def load_jwks(path: Path) -> dict[str | None, jwt.PyJWK]:
    """The signing keys of a JWKS file by kid. Raises ValueError saying what makes the file unusable (checked by
    ``check-config``, at start and on every identity reload, so a bad file never replaces a good one)."""
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror}") from None
    except orjson.JSONDecodeError:
        raise ValueError("is not JSON") from None
    raw = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(raw, list) or not all(isinstance(k, dict) for k in raw):
        raise ValueError("is not a JWKS (an object with a list of keys)")
    if any("d" in k or "p" in k or "k" in k for k in raw):
        raise ValueError("holds private or symmetric key material: a JWKS for the gateway holds public keys only")
    try:
        jwks = jwt.PyJWKSet.from_dict(data)
    except jwt.PyJWTError as exc:
        raise ValueError(f"has no usable key ({exc})") from None
    keys: dict[str | None, jwt.PyJWK] = {}
    for k in jwks.keys:
        if k.public_key_use not in (None, "sig"):
            continue
        if k.key_id in keys:
            raise ValueError(f"two signing keys have the kid {k.key_id!r}")
        keys[k.key_id] = k
    if not keys:
        raise ValueError("has no signing key")
    if None in keys and len(keys) > 1:
        raise ValueError("a key has no kid: when the set holds several keys, tokens pick theirs by kid")
    return keys
