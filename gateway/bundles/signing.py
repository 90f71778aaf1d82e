"""OPA bundle signatures: ``.signatures.json`` holds one JWS (compact JWT) whose payload lists every file of the
bundle with its hash; the gateway checks it as OPA's default verifier does.

1. The JWT's signature, with the configured public key and the configured algorithm (the key decides, not the
   token's ``alg``); a ``kid`` naming another key than ``bundle_key_id`` is refused.
2. ``scope`` in the payload equals ``bundle_scope``.
3. The payload's files and the bundle's files (all but ``.signatures.json``) are the same set, and each file's
   hash matches: the raw bytes' hash, except for ``data.json``, ``data.yaml``, ``.manifest`` (OPA's structured
   documents), hashed over their JSON with object keys sorted and no whitespace, numbers as written.

A bundle with no ``.signatures.json`` when a key is configured, or with one when none is, is refused (as OPA does).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Any

import jwt

from gateway.bundles.archive import SIGNATURES, BundleRefused
from gateway.bundles.settings import BundleSettings

HASHES = {
    "MD5": "md5",
    "SHA-1": "sha1",
    "SHA-224": "sha224",
    "SHA-256": "sha256",
    "SHA-384": "sha384",
    "SHA-512": "sha512",
    "SHA-512-224": "sha512_224",
    "SHA-512-256": "sha512_256",
}
STRUCTURED = ("data.json", "data.yaml", ".signatures.json", ".manifest")


class _Number(str):
    """A JSON number kept as written (Go's json.Number, which OPA's hasher encodes verbatim)."""


def _encode_string(s: str) -> str:
    """Go's encoding/json string form with HTML escaping off: \\" \\\\ \\n \\r \\t \\b \\f, other controls as
    \\u00xx, U+2028/U+2029 escaped, everything else as is."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\n\r\t\b\f":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}[ch])
        elif o < 0x20 or o in (0x2028, 0x2029):
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _canonical(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ",".join(_encode_string(k) + ":" + _canonical(v[k]) for k in sorted(v)) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_canonical(x) for x in v) + "]"
    if isinstance(v, _Number):
        return str(v)
    if isinstance(v, str):
        return _encode_string(v)
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    return json.dumps(v)  # a YAML number


def file_hash(name: str, raw: bytes, algorithm: str) -> str:
    """The hex digest OPA signs for this file."""
    h = hashlib.new(HASHES[algorithm])
    if posixpath.basename(name) in STRUCTURED:
        try:
            if name.endswith(".yaml"):
                import yaml

                value = yaml.safe_load(raw)
            else:
                value = json.loads(raw, parse_int=_Number, parse_float=_Number, parse_constant=_Number)
        except ValueError as exc:
            raise BundleRefused(f"{name}: cannot be parsed to check its hash: {exc}") from None
        h.update(_canonical(value).encode())
    else:
        h.update(raw)
    return h.hexdigest()


def _payload(token: str, s: BundleSettings) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise BundleRefused(f"{SIGNATURES}: not a JWS: {exc}") from None
    kid = header.get("kid")
    if s.key_id is not None and kid is not None and kid != s.key_id:
        raise BundleRefused(f"{SIGNATURES}: signed with key {str(kid)[:64]!r}, not the configured {s.key_id!r}")
    try:
        payload = jwt.decode(
            token,
            s.public_key,
            algorithms=[s.algorithm],
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
                "require": [],
            },
        )
    except jwt.PyJWTError as exc:
        raise BundleRefused(f"{SIGNATURES}: signature not valid for the configured key: {exc}") from None
    if not isinstance(payload, dict):
        raise BundleRefused(f"{SIGNATURES}: the payload is not an object")
    if payload.get("scope", "") != s.scope:
        raise BundleRefused(f"{SIGNATURES}: scope {str(payload.get('scope'))[:64]!r} is not {s.scope!r}")
    return payload


def verify(files: dict[str, bytes], s: BundleSettings) -> None:
    """Raise BundleRefused unless the bundle is signed as configured (or unsigned when no key is)."""
    raw = files.get(SIGNATURES)
    if not s.verify:
        if raw is not None:
            raise BundleRefused(f"{SIGNATURES} present but no bundle_public_key is configured to verify it")
        return
    if raw is None:
        raise BundleRefused(f"unsigned: no {SIGNATURES}, and bundle_public_key requires a signature")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise BundleRefused(f"{SIGNATURES}: invalid JSON: {exc}") from None
    sigs = doc.get("signatures") if isinstance(doc, dict) else None
    if not isinstance(sigs, list) or len(sigs) != 1 or not isinstance(sigs[0], str):
        raise BundleRefused(f"{SIGNATURES}: expected exactly one JWT in signatures")
    payload = _payload(sigs[0], s)
    listed = payload.get("files")
    if not isinstance(listed, list):
        raise BundleRefused(f"{SIGNATURES}: the payload lists no files")
    signed: dict[str, dict[str, Any]] = {}
    for entry in listed:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("name", "hash")):
            raise BundleRefused(f"{SIGNATURES}: a files entry without name and hash")
        name = entry["name"].removeprefix("/")
        if name in signed:
            raise BundleRefused(f"{SIGNATURES}: {name!r} listed twice")
        signed[name] = entry
    for name, content in files.items():
        if name == SIGNATURES:
            continue
        entry = signed.pop(name, None)
        if entry is None:
            raise BundleRefused(f"{name}: not included in the bundle signature")
        algorithm = entry.get("algorithm")
        if algorithm not in HASHES:
            raise BundleRefused(f"{name}: unsupported hashing algorithm {str(algorithm)[:32]!r}")
        if file_hash(name, content, algorithm) != entry["hash"].lower():
            raise BundleRefused(f"{name}: digest mismatch (the file is not the one that was signed)")
    if signed:
        raise BundleRefused(f"{SIGNATURES}: signed files missing from the bundle: {', '.join(sorted(signed))[:300]}")
