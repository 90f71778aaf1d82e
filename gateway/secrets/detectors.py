"""The credential detectors: one ``Detector`` per kind, each a compiled pattern behind cheap literal prefilters.

Why our own patterns and not a library: detect-secrets 1.5.0 (the maintained PyPI detector set) scans line by
line through every plugin and filter; measured on this machine it takes ~16 ms for a 1 KB argument set and ~1 s
for a 64 KB result with its defaults (~3 ms / ~180 ms with only its regex plugins and no filters), far too slow
for a check on every call. The formats below follow the providers' documented token shapes (and the patterns
gitleaks and detect-secrets use for them). A detector's pattern is only tried (``match``, never a scan) where one
of its anchors, a literal every match starts with, occurs: the common case, a text that holds none, costs a few
substring searches, and no pattern ever runs over a whole 64 KB text.

A detector's ``check`` (optional) rejects a match that has the shape but not the substance (a JWT whose header is
not JSON, a "password" whose value is a placeholder), which keeps near-misses out.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class Detector:
    kind: str
    """The finding's name in policy input, audit records, metrics and ``[redacted: KIND]``."""
    anchors: tuple[str, ...]
    """Literals every match starts with (``offset`` characters in): the pattern is tried only where one occurs
    (``lower`` ones are found in the lowered text), never scanned over the whole text."""
    pattern: re.Pattern[str]
    group: str | int = 0
    """The part of a match that is the secret (what is redacted and digested)."""
    check: Callable[[str], bool] | None = None
    lower: bool = False
    """Anchors are matched against the lowered text (case-insensitive key names)."""
    offset: int = 0
    """How many characters before its anchor a match starts."""
    prefix: re.Pattern[str] | None = None
    """The anchors as one regex, for anchors that share a literal prefix (``A(?:KIA|SIA|...)``): the regex engine
    finds them in one pass as fast as one substring search, where one search per anchor would make five."""
    gate: str = ""
    """Characters of which every match holds one: when none occurs in a text (a single ``memchr`` each, far
    cheaper than a substring search), the detector's anchors are not even looked for."""


def entropy(s: str) -> float:
    """Shannon entropy in bits per character."""
    if not s:
        return 0.0
    counts: dict[str, int] = {}
    for ch in s:
        counts[ch] = counts.get(ch, 0) + 1
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _b64json(part: str) -> object:
    pad = "=" * (-len(part) % 4)
    try:
        return orjson.loads(base64.urlsafe_b64decode(part + pad))
    except (binascii.Error, ValueError):
        return None


def _jwt(token: str) -> bool:
    """A JWT: its header decodes to a JSON object naming an ``alg``, its payload to a JSON object."""
    parts = token.split(".")
    header = _b64json(parts[0])
    return isinstance(header, dict) and "alg" in header and isinstance(_b64json(parts[1]), dict)


def _private_key(block: str) -> bool:
    """A PEM/OpenSSH private key block with a body (not the header alone, as in documentation)."""
    body = block.split("-----", 2)[-1]
    return len(_NOT_BASE64.sub("", body)) >= 64


_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]+")


_PLACEHOLDER = re.compile(
    r"(?i)^(?:x+|\*+|\.+|<[^>]*>|\$\{[^}]*\}|\{\{[^}]*\}\}|%[a-z_]+%|(?:your|my|the)[_-].*|.*example.*)$"
)


def high_entropy(value: str) -> bool:
    """A generic secret's value: 16 to 512 characters, no whitespace, not a placeholder, a path or a number, and
    random-looking: >= 3.0 bits/char with letters and digits mixed (hex keys), >= 3.5 with both cases and no
    digit, >= 4.0 otherwise (``created_at_desc_order`` is a name, not a key)."""
    if not 16 <= len(value) <= 512 or value.isdigit() or _PLACEHOLDER.match(value):
        return False
    if value.startswith(("/", "./", "../", "~/")) or any(ch.isspace() for ch in value):
        return False
    e = entropy(value)
    digit, upper, lower = (any(f(ch) for ch in value) for f in (str.isdigit, str.isupper, str.islower))
    if digit and (upper or lower):
        return e >= 3.0  # hex and base62 keys
    return e >= (3.5 if upper and lower else 4.0)  # one case only: identifiers and words read as random


SECRET_KEY_NAME = re.compile(
    r"(?i)(?:^|[^a-z])(?:api[_-]?key|apikey|access[_-]?key|secret|token|passw(?:or)?d|passwd|pwd|credential"
    r"|auth[_-]?key|private[_-]?key|client[_-]?secret|session[_-]?key|signing[_-]?key)s?(?:[^a-z]|$)"
)
"""A key name that says its value is a credential (an argument's object key, an env variable, a config key)."""

_GENERIC_WORDS = ("_key", "-key", "apikey", "accesskey", "secret", "token", "passw", "pwd", "credential")
"""The roots of credential-like names (``api_key``, ``client_secret``, ``DB_PASSWORD``...): few anchors, few passes."""

# A root, up to 24 more name characters, an assignment (=, :, =>, :=, JSON's ": "), an optional quote, the value.
_GENERIC = re.compile(
    r"(?i)(?:[_-]key|apikey|accesskey|secret|token|passw(?:or)?d|pwd|credential)[\w.-]{0,24}[\"']?\s*"
    r"(?::|=>?|:=)\s*[\"']?(?P<value>[A-Za-z0-9+/_.=~!@#$%^&*-]{16,512})"
)

DETECTORS: tuple[Detector, ...] = (
    Detector(
        "private-key",
        ("-----BEGIN ",),
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[A-Za-z0-9+/=\s:,.\-]*?"
            r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|(?=[^A-Za-z0-9+/=\s:,.\-])|\Z)"
        ),
        check=_private_key,
    ),
    Detector(
        "aws-access-key",
        ("AKIA", "ASIA", "ABIA", "ACCA", "A3T"),
        re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z2-7]{16}(?![A-Za-z0-9])"),
        prefix=re.compile(r"A(?:KIA|SIA|BIA|CCA|3T)"),
        gate="A",
    ),
    Detector(
        "aws-secret-key",
        ("aws", "secret"),
        re.compile(
            r"(?i)(?:aws.{0,20}?secret.{0,20}?|secret_?access_?key)[\"']?\s*(?::|=>?|:=)\s*[\"']?"
            r"(?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
        ),
        group="value",
        lower=True,
        gate=":=",
    ),
    Detector(
        "gcp-api-key",
        ("AIza",),
        re.compile(r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])"),
        gate="A",
    ),
    Detector(
        "gcp-service-account",
        ('"private_key_id"',),
        re.compile(r"\"private_key_id\"\s*:\s*\"(?P<value>[a-f0-9]{40})\""),
        group="value",
        gate="_",
    ),
    Detector(
        "azure-storage-key",
        ("AccountKey=", "SharedAccess"),
        re.compile(
            r"(?:AccountKey|SharedAccessKey)=(?P<value>[A-Za-z0-9+/]{43}=|[A-Za-z0-9+/]{86}==)"
            r"|SharedAccessSignature sr=[^&\s\"']+&sig=(?P<sas>[A-Za-z0-9%+/=]{43,})"
        ),
        group="value",
        gate="=",
    ),
    Detector(
        "azure-ad-client-secret",
        ("Q~",),
        re.compile(r"(?<![A-Za-z0-9_~.-])[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.-]{31,34}(?![A-Za-z0-9_~.-])"),
        offset=4,
        gate="~",
    ),
    Detector(
        "github-token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        re.compile(r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})(?![A-Za-z0-9_])"),
        prefix=re.compile(r"g(?:h[pousr]_|ithub_pat_)"),
        gate="_",
    ),
    Detector(
        "gitlab-token",
        ("glpat-", "gldt-", "glrt-", "glptt-"),
        re.compile(r"(?<![A-Za-z0-9_-])(?:glpat|gldt|glrt|glptt)-[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])"),
        prefix=re.compile(r"gl(?:pat|dt|rt|ptt)-"),
        gate="-",
    ),
    Detector(
        "slack-token",
        ("xoxb-", "xoxa-", "xoxp-", "xoxr-", "xoxs-"),
        re.compile(r"(?<![A-Za-z0-9-])xox[baprs]-(?:[0-9]{10,13}-){1,2}[A-Za-z0-9-]{10,}"),
        prefix=re.compile(r"xox[baprs]-"),
        gate="-",
    ),
    Detector(
        "slack-webhook",
        ("https://hooks.slack.com/",),
        re.compile(r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/+-]{40,}"),
        gate="/",
    ),
    Detector(
        "stripe-key",
        ("k_live_", "k_test_"),
        re.compile(r"(?<![A-Za-z0-9_])[sr]k_(?:live|test)_[A-Za-z0-9]{24,}(?![A-Za-z0-9])"),
        offset=1,
        gate="_",
    ),
    Detector(
        "anthropic-key",
        ("sk-ant-",),
        re.compile(r"(?<![A-Za-z0-9_-])sk-ant-[a-z]{3,8}\d{2}-[A-Za-z0-9_-]{80,}(?![A-Za-z0-9_-])"),
        gate="-",
    ),
    Detector(
        "openai-key",
        ("sk-",),
        re.compile(
            r"(?<![A-Za-z0-9_-])sk-(?:(?:proj|svcacct|admin)-)?(?:[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,}"
            r"|(?<=-)[A-Za-z0-9_-]{80,})(?![A-Za-z0-9_-])"
        ),
        gate="-",
    ),
    Detector(
        "jwt",
        ("eyJ",),
        re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
        check=_jwt,
        gate=".",
    ),
    Detector(
        "generic-secret",
        _GENERIC_WORDS,
        _GENERIC,
        group="value",
        check=high_entropy,
        lower=True,
        gate=":=",
    ),
)

KINDS: frozenset[str] = frozenset(d.kind for d in DETECTORS)
