"""``[policy] bundle_*``, resolved once at start: the token source, the verification key, the caps.

The token is read when a poll is made (``${VAR}`` from the environment, or the file a secret is mounted as), so a
rotated token needs no restart; it is never logged. The public key is parsed at load: a key that cannot be used is
a configuration error, not a bundle that is refused later.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import Config

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class BundleSettings:
    url: str
    poll_s: float
    timeout_s: float
    decision: str
    token: str | None
    token_file: Path | None
    public_key: Any
    """A ``cryptography`` public key, or None when signatures are not required."""
    key_id: str | None
    algorithm: str
    scope: str
    max_bytes: int
    max_unpacked_bytes: int
    fallback: Path | None

    @property
    def verify(self) -> bool:
        return self.public_key is not None

    def bearer(self) -> str | None:
        """The token for this poll (None: send no Authorization header)."""
        if self.token_file is not None:
            return self.token_file.read_text().strip() or None
        if self.token is not None:
            return _ENV_REF.sub(lambda m: os.environ.get(m.group(1), ""), self.token).strip() or None
        return None


def _load_key(pem: str, algorithm: str) -> Any:
    """The PEM public key, checked against the algorithm it is configured for (RSA for RS/PS, EC for ES...)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    want: tuple[type, ...] = {"R": (rsa.RSAPublicKey,), "P": (rsa.RSAPublicKey,), "E": (ec.EllipticCurvePublicKey,)}[
        algorithm[0]
    ]
    if algorithm == "EdDSA":
        want = (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)
    if not isinstance(key, want):
        raise ValueError(f"the key is not of the kind {algorithm} needs")
    return key


def bundle_settings(cfg: Config) -> BundleSettings:
    """The settings of a validated config (``parse_config`` has checked the files and the key already)."""
    p = cfg.policy
    assert p.bundle_url is not None
    pem = p.bundle_public_key
    if p.bundle_public_key_file is not None:
        pem = cfg.resolve(p.bundle_public_key_file).read_text()
    return BundleSettings(
        url=p.bundle_url,
        poll_s=p.bundle_poll_s,
        timeout_s=p.bundle_timeout_s,
        decision=p.decision,
        token=p.bundle_token,
        token_file=cfg.resolve(p.bundle_token_file) if p.bundle_token_file else None,
        public_key=_load_key(pem, p.bundle_key_algorithm) if pem is not None else None,
        key_id=p.bundle_key_id,
        algorithm=p.bundle_key_algorithm,
        scope=p.bundle_scope,
        max_bytes=p.bundle_max_bytes,
        max_unpacked_bytes=p.bundle_max_unpacked_bytes,
        fallback=cfg.resolve(p.bundle_fallback_path) if p.bundle_fallback_path else None,
    )


def bundle_config_errors(cfg: Config, source: str) -> list[str]:
    """The ``file: key: what is wrong`` lines for the bundle settings that name files or keys."""
    p = cfg.policy
    errors = []
    if p.bundle_token_file is not None and not cfg.resolve(p.bundle_token_file).is_file():
        errors.append(f"{source}: policy.bundle_token_file: {cfg.resolve(p.bundle_token_file)} does not exist")
    if p.bundle_fallback_path is not None and not cfg.resolve(p.bundle_fallback_path).exists():
        errors.append(f"{source}: policy.bundle_fallback_path: {cfg.resolve(p.bundle_fallback_path)} does not exist")
    pem, key = p.bundle_public_key, "bundle_public_key"
    if p.bundle_public_key_file is not None:
        key = "bundle_public_key_file"
        try:
            pem = cfg.resolve(p.bundle_public_key_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"{source}: policy.{key}: {cfg.resolve(p.bundle_public_key_file)} cannot be read: {exc}")
            return errors
    if pem is not None:
        try:
            _load_key(pem, p.bundle_key_algorithm)
        except ValueError as exc:
            errors.append(f"{source}: policy.{key}: {exc}")
    return errors
