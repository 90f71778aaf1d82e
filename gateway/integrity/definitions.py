"""The canonical definition of a listed item and its digest: what the lock pins.

Only the fields that shape what a model reads or what a policy decides are pinned (a fixed list per kind);
anything else an upstream sends (``_meta``, ``icons``) may change without drift. A field that is absent or null
is left out, so an upstream that starts sending ``"title": null`` has not changed its tool.
"""

from __future__ import annotations

import hashlib
from typing import Any

from gateway.audit import canonical as canonical_json
from gateway.audit import recordable

KINDS = ("tools", "prompts", "resource_templates")
"""The lock's sections, in the order they are written and reported."""

ITEM_KIND = {"tools": "tool", "prompts": "prompt", "resource_templates": "resource_template"}
"""Section -> the singular the audit, metrics and /readyz name an item by."""

CATALOG_KIND = {"tools": "tools", "prompts": "prompts", "resource_templates": "templates"}
"""Section -> the catalog's name for the list (``gateway.catalog._LISTS``)."""

FIELDS: dict[str, tuple[str, ...]] = {
    "tools": ("name", "title", "description", "inputSchema", "outputSchema", "annotations"),
    "prompts": ("name", "title", "description", "arguments"),
    "resource_templates": ("uriTemplate", "name", "title", "description", "mimeType", "annotations"),
}

KEY_FIELD = {"tools": "name", "prompts": "name", "resource_templates": "uriTemplate"}


def item_key(kind: str, item: dict[str, Any]) -> str | None:
    """The name an item is locked under (a template's ``uriTemplate``); None for an item without one."""
    key = item.get(KEY_FIELD[kind])
    return key if isinstance(key, str) and key else None


def canonical(kind: str, item: dict[str, Any]) -> dict[str, Any]:
    """The pinned fields of ``item``, absent and null ones left out, in a form JSON carries exactly (what the
    lock file holds reads back to the same digest)."""
    out: dict[str, Any] = recordable({f: item[f] for f in FIELDS[kind] if item.get(f) is not None})
    return out


def digest(definition: dict[str, Any]) -> str:
    """``sha256:<hex>`` of the definition's sorted-key compact JSON (the audit log's canonical form: any JSON
    value an upstream sends has one)."""
    return "sha256:" + hashlib.sha256(canonical_json(definition)).hexdigest()
