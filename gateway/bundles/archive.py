"""Unpack a downloaded bundle in memory, refusing what could hurt: tar bombs, path traversal, links, devices.

Nothing is extracted to disk as named by the archive. The files that pass are packed again into a fresh
``.tar.gz`` with clean names (``repack``); that file, and only that, goes to the tests-gated reload, so what is
tested is exactly what was verified.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib

import orjson

MAX_MEMBERS = 10_000
SIGNATURES = ".signatures.json"
MANIFEST = ".manifest"


class BundleRefused(Exception):
    """A bundle that is not activated; the message says why (it names files, never secrets)."""


def clean_name(name: str) -> str:
    """The member's path inside the bundle, or BundleRefused. ``opa build`` writes names with a leading ``/``;
    ``..``, empty or ``.`` components, backslashes and control characters are refused (never normalised away)."""
    rel = name.removeprefix("/") if name.startswith("/") else name.removeprefix("./")
    parts = rel.split("/")
    if (
        not rel
        or any(p in ("", ".", "..") for p in parts)
        or "\\" in rel
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in rel)
    ):
        raise BundleRefused(f"bundle member {name!r}: not a plain relative path")
    return rel


def unpack(raw: bytes, max_unpacked: int) -> dict[str, bytes]:
    """Every regular file of the bundle, by clean name. Directories are skipped; links, devices and FIFOs, a name
    twice, more than ``MAX_MEMBERS`` members, or more than ``max_unpacked`` bytes in all refuse the bundle."""
    files: dict[str, bytes] = {}
    total = 0
    members = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            for member in tar:
                members += 1
                total += member.size + 512  # the header block counts too: a million empty members is a bomb
                if members > MAX_MEMBERS:
                    raise BundleRefused(f"bundle has more than {MAX_MEMBERS} members")
                if total > max_unpacked:
                    raise BundleRefused(f"bundle unpacks to more than {max_unpacked} bytes (bundle_max_unpacked_bytes)")
                if member.isdir():
                    clean_name(member.name)
                    continue
                if not member.isfile():
                    raise BundleRefused(f"bundle member {member.name!r}: links, devices and FIFOs are not allowed")
                name = clean_name(member.name)
                if name in files:
                    raise BundleRefused(f"bundle member {name!r} appears twice")
                f = tar.extractfile(member)
                files[name] = f.read(member.size + 1) if f is not None else b""
                if len(files[name]) != member.size:
                    raise BundleRefused(f"bundle member {name!r}: its size is not the one its header declares")
    except BundleRefused:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BundleRefused(f"not a readable OPA bundle (.tar.gz): {type(exc).__name__}: {exc}") from None
    return files


def manifest(files: dict[str, bytes]) -> dict[str, object]:
    """The ``.manifest`` (an object; ``revision`` a string, ``roots`` a list of strings), or {} without one."""
    raw = files.get(MANIFEST)
    if raw is None:
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BundleRefused(f".manifest: invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BundleRefused(".manifest: must be a JSON object")
    if not isinstance(doc.get("revision", ""), str):
        raise BundleRefused(".manifest: revision must be a string")
    roots = doc.get("roots", [""])
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise BundleRefused(".manifest: roots must be a list of strings")
    return doc


def repack(files: dict[str, bytes]) -> bytes:
    """A fresh .tar.gz of ``files`` (regular files, clean names, fixed metadata): what the reload loads."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()
