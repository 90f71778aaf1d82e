"""The ``[[limits]]`` step of the admission stage: take the request's limits, or refuse it with its records.

Called by ``Admission.admit`` before the policy decides (so the policy sees ``input.usage``), for every request
kind; a refused request gets a decision record (allow false, the reason naming the limit), an outcome record
``limited`` and a JSON-RPC error ``-32000`` whose data names the limit and when to retry.
"""

from __future__ import annotations

import math
from typing import Any

from gateway.errors import LIMITED, GatewayError
from gateway.fleet.limits import Limiter, Verdict
from gateway.metrics import Metrics
from gateway.policy import Decision


class LimitStep:
    def __init__(self, limiter: Limiter, metrics: Metrics):
        self.limiter = limiter
        self.metrics = metrics

    async def __call__(self, admission: Any, req: Any, target: Any, fields: dict[str, Any]) -> dict[str, Any] | None:
        """``input.usage`` for this request (None when no limit matches); raises when a limit refuses it."""
        tool = f"{target.server}__{target.name}" if req.action == "tools/call" and target.server else req.name
        verdict = await self.limiter.take(req.decision_id, req.agent.id, req.agent.team, tool)
        if verdict is None:
            return None
        if verdict.refused is None and not verdict.unavailable:
            return verdict.usage
        await self._refuse(admission, req, target, fields, verdict)
        return None  # not reached

    async def _refuse(self, admission: Any, req: Any, target: Any, fields: dict[str, Any], verdict: Verdict) -> None:
        retry = max(1, math.ceil(verdict.retry_after_s))
        if verdict.refused is not None:
            b = verdict.refused
            name = b.limit
            reason = f"limit {b.limit}: {b.label} = {b.limit_value if b.kind != 'rate' else b.x:g} reached"
            data = {"limit": b.limit, "bound": b.label, "retry_after_s": retry}
        else:
            name = "redis_unavailable"
            reason = "limits cannot be counted (Redis unreachable, fleet.on_redis_error = deny)"
            data = {"limit": name, "retry_after_s": retry}
        self.metrics.limited.labels(name).inc()
        inp = admission.decider.build_input(req, target.server, **fields)
        await admission._record(req, inp, Decision(False, (reason,), admission.decider.engine.revision), target)
        await admission.finish(req, "limited", 0.0, reason)
        raise GatewayError(LIMITED, f"{reason}; retry after {retry} s", data)
