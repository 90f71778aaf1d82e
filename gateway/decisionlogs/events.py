"""An audit record as an event of OPA's decision-log API, so any sink built for OPA's decision logs takes it.

A decision record keeps OPA's fields (``decision_id``, ``path``, ``input``, ``result``, ``bundles.<name>.revision``,
``requested_by``, ``timestamp``, ``masked``); ``labels`` are OPA's ``id`` and ``version`` (the replica and the
gateway's version) plus ``replica_id``. Every other record (outcomes, authentication failures, ...) goes as an
event of its own, ``path`` = ``gateway/<type>``, its fields under ``result``, joined to its decision by
``decision_id``. Every event also carries ``type``, the gateway's own fields of the record, and ``event_id`` (the
SHA-256 of the record's line in the audit log): delivery is at least once, so a sink deduplicates by it.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__

_OPA_FIELDS = ("decision_id", "path", "input", "result", "bundles", "requested_by", "timestamp", "masked", "metrics")
_GATEWAY_FIELDS = ("agent", "team", "auth", "session", "action", "server", "tool", "resource", "allow", "reasons")


def to_event(record: dict[str, Any], line_hash: str, replica_id: str) -> dict[str, Any]:
    kind = str(record.get("type", "unknown"))
    replica = str(record.get("replica_id") or replica_id)
    event: dict[str, Any] = {
        "labels": {"id": replica, "version": __version__, "replica_id": replica, "app": "mcp-gateway"},
        "type": kind,
        "event_id": line_hash,
    }
    if kind == "decision":
        for k in _OPA_FIELDS:
            if k in record and record[k] is not None:
                event[k] = record[k]
        event.setdefault("metrics", {})
        for k in (*_GATEWAY_FIELDS, "error", "engine_decision_id", "arguments_digest"):
            if k in record:
                event[k] = record[k]
        return event
    event["path"] = f"gateway/{kind}"
    for k in ("decision_id", "timestamp"):
        if k in record:
            event[k] = record[k]
    event["result"] = {k: v for k, v in record.items() if k not in ("type", "prev", "replica_id", "decision_id")}
    event["metrics"] = {"timer_gateway_call_ns": int(record["duration_ms"] * 1e6)} if _ms(record) else {}
    return event


def _ms(record: dict[str, Any]) -> bool:
    v = record.get("duration_ms")
    return isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
