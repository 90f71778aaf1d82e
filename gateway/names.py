"""What counts as a name the gateway can print and compare safely: agent ids, teams and roles.

A role is an exact token compared byte for byte by the policy. A role holding whitespace or a control
character is refused wherever it comes from (a token's claims or the configuration), never split or trimmed:
``"user\\u00a0admin"`` must not become ``admin`` by some later reader's notion of whitespace.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_CHARS = 256
"""Longest agent id, team or role (they appear in logs, metrics labels and audit records)."""
MAX_ROLES = 256


def unprintable(value: str) -> bool:
    """True for a name that could be mistaken for another when printed: empty, or holding whitespace of any
    kind, a control character (C0, C1, DEL), a line or paragraph separator, or a format character (bidi
    overrides, zero-width characters)."""
    return not value or any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in value)


def role_problem(role: object) -> str | None:
    """Why ``role`` is not a usable role, or None."""
    if not isinstance(role, str):
        return "is not a string"
    if len(role) > MAX_NAME_CHARS:
        return f"is longer than {MAX_NAME_CHARS} characters"
    if unprintable(role):
        return "is empty or holds whitespace or control characters"
    return None


def parse_roles(value: object) -> tuple[str, ...]:
    """Roles as a tuple: a list of role strings, or one string of roles separated by single ASCII spaces (the
    OAuth ``scope`` convention, RFC 6749 section 3.3). Anything else raises ValueError."""
    if isinstance(value, str):
        items: list[object] = list(value.split(" ")) if value else []
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError("must be a list of strings or a space-separated string")
    if len(items) > MAX_ROLES:
        raise ValueError(f"holds more than {MAX_ROLES} roles")
    out: list[str] = []
    for item in items:
        problem = role_problem(item)
        if problem is not None:
            raise ValueError(f"has a role that {problem}")
        out.append(item)  # type: ignore[arg-type]
    return tuple(out)
