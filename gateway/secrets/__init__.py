"""Secret scanning of call arguments (findings for the policy) and of results (redacted or withheld).

``SecretScanning`` resolves ``[secrets]`` and its overrides into one ``Rules`` per (server, item) once, cached;
the pipeline asks it for the rules of each call. See docs/integrity.md, "Secret scanning".
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from typing import Any

from gateway.secrets.detectors import DETECTORS, KINDS
from gateway.secrets.scanner import Finding, Scanner
from gateway.secrets.settings import SecretsConfig, SecretsOverride

__all__ = [
    "KINDS",
    "Finding",
    "Rules",
    "Scanner",
    "SecretScanning",
    "SecretsConfig",
    "SecretsOverride",
    "redacted_copy",
]

_CACHE = 10_000


@dataclass(frozen=True, slots=True)
class Rules:
    scanner: Scanner
    scan_arguments: bool
    scan_results: bool
    on_result: str


class SecretScanning:
    def __init__(self, cfg: SecretsConfig | None = None):
        self.cfg = cfg or SecretsConfig()
        self._cache: dict[tuple[str | None, str | None], Rules] = {}
        self._scanners: dict[tuple[frozenset[str], tuple[str, ...], frozenset[str]], Scanner] = {}

    def rules(self, server: str | None, name: str | None) -> Rules:
        key = (server, name)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._resolve(server or "", name or "")
            if len(self._cache) >= _CACHE:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def _resolve(self, server: str, name: str) -> Rules:
        c = self.cfg
        scan_arguments, scan_results, on_result = c.scan_arguments, c.scan_results, c.on_result
        kinds = {k: c.kinds.get(k, True) for k in KINDS}
        allow, digests = list(c.allow), set(c.allow_digests)
        for o in c.overrides:
            if not (fnmatch.fnmatchcase(server, o.server) and fnmatch.fnmatchcase(name, o.tool)):
                continue
            scan_arguments = o.scan_arguments if o.scan_arguments is not None else scan_arguments
            scan_results = o.scan_results if o.scan_results is not None else scan_results
            on_result = o.on_result or on_result
            kinds.update(o.kinds)
            allow += o.allow
            digests |= set(o.allow_digests)
        enabled = frozenset(k for k, on in kinds.items() if on)
        skey = (enabled, tuple(allow), frozenset(digests))
        scanner = self._scanners.get(skey)
        if scanner is None:
            scanner = self._scanners[skey] = Scanner([d for d in DETECTORS if d.kind in enabled], allow, digests)
        return Rules(scanner, scan_arguments, scan_results, on_result)


_DEFAULT = Scanner()


def redacted_copy(value: Any) -> Any:
    """A copy of ``value`` with every secret the default detectors find redacted (for records that keep values)."""
    copied = copy.deepcopy(value)
    if isinstance(copied, (dict, list)):
        _DEFAULT.scan(copied, "arguments", "arguments", redact=True)
    return copied
