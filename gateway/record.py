"""The record stage: audit records of decisions and outcomes, in OPA decision-log shape where it fits.

A decision's record is written before its call is forwarded; if it cannot be written the call is refused,
so nothing reaches an upstream without its record. The outcome follows under the same ``decision_id``; if it
cannot be written, the caller withholds the result (see ``gateway.admission``). The recorder never raises:
any JSON value is written (``audit.encode_record``) and digested (``audit.canonical``), and a write the disk
refuses is counted, logged and reported as False.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from gateway import logs, stages, tracing
from gateway.audit import AuditLog, canonical, now_iso
from gateway.decide import Request
from gateway.metrics import Metrics
from gateway.policy import Decision
from gateway.secrets import redacted_copy

log = logging.getLogger("gateway.audit")
call_log = logging.getLogger(logs.CALL_LOGGER)


class Recorder:
    def __init__(self, audit: AuditLog, metrics: Metrics, record_arguments: bool, replica_id: str | None = None):
        self._audit = audit
        self._metrics = metrics
        self._record_arguments = record_arguments
        self._replica_id = replica_id
        """``[fleet] replica_id`` (default: the host name): every record names the replica whose chain it is in."""

    async def _write(self, record: dict[str, Any]) -> bool:
        if self._replica_id is not None:
            record["replica_id"] = self._replica_id
        try:
            await self._audit.write(record)
        except Exception as exc:  # OSError from the disk; anything else is a bug, and still must not escape
            return self._failed(record, exc)
        self._metrics.count_audit(record["type"])
        return True

    def write_now(self, record: dict[str, Any]) -> bool:
        """Write a record from code that cannot await (with fsync it waits for the next group commit, blocking its
        thread): for rare records only, such as integrity drift; calls use the awaited path."""
        if self._replica_id is not None:
            record["replica_id"] = self._replica_id
        try:
            self._audit.append(record)
        except Exception as exc:
            return self._failed(record, exc)
        self._metrics.count_audit(record["type"])
        return True

    def _failed(self, record: dict[str, Any], exc: Exception) -> bool:
        self._metrics.audit_failures.inc()
        log.error(
            "audit write of a %s record (decision id %s) failed: %s",
            record.get("type"),
            record.get("decision_id"),
            exc,
        )
        return False

    async def decision(
        self, req: Request, input: dict[str, Any], decision: Decision, server: str | None, tool: str | None
    ) -> bool:
        """Write the decision record; False means it is not on record and the call must not go ahead."""
        stages.mark("decide")
        logs.bind(req.decision_id)
        try:
            tracing.annotate_call(req, decision, server, tool)
        except Exception:  # tracing is best effort; the record is not
            log.exception("tracing the decision %s failed", req.decision_id)
        args = req.arguments
        args_digest = digest(args) if args is not None else None
        recorded_input = dict(input)
        if not self._record_arguments and args is not None:
            keys = sorted(str(k) for k in args) if isinstance(args, dict) else None
            recorded_input["arguments"] = {"digest": args_digest, "keys": keys}
        elif input.get("findings") and args is not None:  # values kept for replay, never a secret's
            recorded_input["arguments"] = redacted_copy(args)
        record: dict[str, Any] = {
            "type": "decision",
            "decision_id": req.decision_id,
            "timestamp": now_iso(req.time_ns),
            "path": "gateway/decision",
            "agent": req.agent.id,
            "team": req.agent.team,
            "auth": req.agent.auth,
            "session": req.session_id,
            "action": req.action,
            "server": server,
            "tool": tool,
            "resource": req.uri,
            "arguments_digest": args_digest,
            "allow": decision.allow,
            "reasons": list(decision.reasons),
            "error": decision.error,
            "input": recorded_input,
            "result": decision.result or None,
            "bundles": {"gateway": {"revision": decision.revision}},
        }
        if decision.engine_decision_id:
            record["engine_decision_id"] = decision.engine_decision_id
        record["labels"] = {"app": "mcp-gateway"}
        record["requested_by"] = req.remote_addr
        if not self._record_arguments and args is not None:
            record["masked"] = ["/input/arguments"]
        if decision.monitor is not None:  # monitor mode: denied by the policy, let through (gateway/admission.py)
            record["mode"] = "monitor"
            record["monitor"] = decision.monitor
            call_log.info(
                "would deny %s %s for %s (monitor mode): %s",
                req.action,
                req.name or req.uri or "",
                req.agent.id,
                "; ".join(decision.reasons) or "no reason given",
                extra={"agent": req.agent.id, "action": req.action},
            )
        elif not decision.allow:
            self._metrics.count_denial(server or "unknown", req.agent.team, decision.reasons)
            call_log.info(
                "denied %s %s for %s: %s",
                req.action,
                req.name or req.uri or "",
                req.agent.id,
                "; ".join(decision.reasons) or "no reason given",
                extra={"agent": req.agent.id, "action": req.action},
            )
        written = await self._write(record)
        stages.mark("record")
        return written

    async def outcome(
        self, req: Request, outcome: str, duration_s: float, error: str | None = None, **extra: Any
    ) -> bool:
        """Write the outcome record; False means it is not on record (the caller withholds what it would answer)."""
        stages.mark("forward")
        record: dict[str, Any] = {
            "type": "outcome",
            "decision_id": req.decision_id,
            "timestamp": now_iso(),
            "agent": req.agent.id,
            "outcome": outcome,
            "duration_ms": round(duration_s * 1000, 3),
        }
        if error is not None:
            record["error"] = error
        record.update(extra)
        written = await self._write(record)
        try:
            tracing.annotate_outcome(outcome, error)
        except Exception:
            log.exception("tracing the outcome of %s failed", req.decision_id)
        call_log.log(
            logging.WARNING if outcome == "upstream_error" else logging.INFO,
            "%s %s by %s: %s in %.2f ms%s",
            req.action,
            req.name or req.uri or "",
            req.agent.id,
            outcome,
            duration_s * 1000,
            f" ({error})" if error else "",
            extra={
                "agent": req.agent.id,
                "action": req.action,
                "outcome": outcome,
                "duration_ms": record["duration_ms"],
            },
        )
        stages.mark("record")
        return written

    async def shadow_disagreement(self, record: dict[str, Any]) -> bool:
        """A shadow policy decided otherwise than the live one (gateway/policy/shadow.py builds the record)."""
        return await self._write({"type": "shadow_disagreement", "timestamp": now_iso(), **record})

    async def auth_failure(self, reason: str, remote_addr: str | None, path: str) -> None:
        await self._write(
            {
                "type": "auth_failure",
                "timestamp": now_iso(),
                "reason": reason,
                "remote_addr": remote_addr,
                "path": path,
                "allow": False,
            }
        )


def digest(value: Any) -> str:
    """SHA-256 of the canonical form of any JSON value (orjson's sorted-key form when it can write it)."""
    return hashlib.sha256(canonical(value)).hexdigest()
