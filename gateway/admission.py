"""The admission stage: the one path every request takes before anything acts on it.

Every request kind of the pipeline (calls, prompts, resources, lists, subscriptions, completion, the logging
level) and every message the relay passes from an upstream to an agent goes through ``Admission.admit`` (or
``Admission.relayed``): build the policy input, decide, treat a hidden item exactly as a missing one, record,
count. A request kind added later calls the same method and cannot skip a step.

Hidden equals missing, in answer and in work: a request naming an item (tool, prompt, resource, template,
completion reference, subscription) is decided whether the item exists or not, and when the decision does not
allow it, or the item does not exist, the item's visibility is decided too, uncached. A missing item and a
hidden one thus cost the same two engine evaluations, one decision record and one outcome record, and get the
same error (the caller builds it from the name the agent sent, never from what the gateway knows).

Monitor mode (``gateway/policy/monitor.py``): a denial the policy marked ``mode: "monitor"``, or one a
``[[policy.monitor]]`` entry matches, is let through: recorded with ``mode: "monitor"``, counted as
``would_deny``, and its outcome recorded as ``would_deny`` (with the call's own outcome beside it). Only a decision
the policy made on an existing, visible item can be monitored: engine failures, refused arguments, arguments
carrying a secret (``input.findings``), unknown and hidden items (and names past 128 characters, refused before)
stay denied, and the forwarded call keeps its
containment. Relayed messages (upstream to agent) are always enforced. A shadow policy (``gateway/policy/shadow.py``)
is offered every decision made on an existing item, off the call path.

The recorder never raises; a decision that cannot be recorded refuses the request, and an outcome that cannot
be recorded withholds the result (``finish``): the agent gets an error naming the decision id instead.
Unexpected exceptions become a generic error naming the decision id (``guarded``); their text stays in the log.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from connectors.jsonrpc import ProgressFn
from gateway import tracing
from gateway.decide import Decider, RefusedInput, Request
from gateway.errors import INTERNAL_ERROR, INVALID_PARAMS, GatewayError
from gateway.metrics import Metrics
from gateway.policy import Decision
from gateway.policy.monitor import Monitor
from gateway.policy.shadow import Offered, Shadow
from gateway.record import Recorder

log = logging.getLogger("gateway.admission")

MAX_NAME_LENGTH = 128
"""MCP's limit for tool and prompt names; longer ones are refused before any policy work."""

_LIST_ACTION = {"tool": "tools/list", "prompt": "prompts/list", "resource": "resources/list"}

# Where the request the current task handles stands: (decision id, "decided" or "finished"). ``guarded`` reads
# it to write what an unexpected exception left unwritten, so no request leaves without its records.
_stage: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("admission", default=None)
# The request the current task handles, when its denial was let through in monitor mode: (decision id, reasons).
# ``finish`` records its outcome as ``would_deny``.
_monitored: contextvars.ContextVar[tuple[str, tuple[str, ...]] | None] = contextvars.ContextVar(
    "monitored", default=None
)


@dataclass(frozen=True, slots=True)
class Target:
    """What a request names, as routed: the item, the upstream it routes to, and whether it exists there."""

    kind: str | None
    """"tool", "prompt" or "resource" (templates and completion references are resources or prompts); None for
    a request about a catalogue or a session rather than one item."""
    server: str | None
    """The upstream the request routes to (None when the name routes nowhere)."""
    name: str | None = None
    """The upstream's own name of the item (a resource's URI)."""
    exists: bool = True
    annotations: dict[str, Any] = field(default_factory=dict)


class Admission:
    def __init__(
        self,
        decider: Decider,
        recorder: Recorder,
        metrics: Metrics,
        monitor: Monitor | None = None,
        shadow: Shadow | None = None,
    ):
        self.decider = decider
        self.recorder = recorder
        self.metrics = metrics
        self.monitor = monitor or Monitor()
        """[[policy.monitor]] entries (the service sets them from the config)."""
        self.shadow = shadow
        """The shadow policy, when [policy] shadow_path names one."""
        self.limits: Any = None
        """The [[limits]] step (gateway/fleet/admit.py), when limits are configured."""

    # --- before any work -----------------------------------------------------------------------------------

    async def check_name(self, req: Request, kind: str, name: str | None = None) -> None:
        """Refuse a tool or prompt name past MCP's 128 characters before any policy work; the record keeps the
        name's first 128 characters and its length, so a 200 KB name is not an amplifier."""
        name = req.name if name is None else name
        if name is None or len(name) <= MAX_NAME_LENGTH:
            return
        message = f"{kind} name longer than {MAX_NAME_LENGTH} characters ({len(name)})"
        cut = name[:MAX_NAME_LENGTH]
        if kind == "tool":
            inp = self.decider.build_input(req, None, tool=cut)
        else:
            inp = self.decider.build_input(req, None, prompt=cut)
        inp["arguments"] = None
        decision = Decision(False, (message,), self.decider.engine.revision)
        req.name = cut  # what the records and the log lines name from here on
        await self._record(req, inp, decision, Target(kind, None, cut, exists=False))
        await self.recorder.outcome(req, "refused", 0.0, message, name_length=len(name))
        raise GatewayError(INVALID_PARAMS, f"Invalid {message}")

    # --- the stage -----------------------------------------------------------------------------------------

    async def admit(self, req: Request, target: Target, missing: GatewayError, **fields: Any) -> Decision:
        """Decide, record and count ``req``; raise ``missing`` when the target does not exist or is hidden.

        ``fields`` go to the policy input (``Decider.build_input``). Returns the decision, allowing or not:
        how a denial is answered (an error, a tool result with ``isError``) is the request kind's business.
        """
        if self.limits is not None:  # [[limits]]: taken before the decision; refused with its records
            fields["usage"] = await self.limits(self, req, target, fields)
        inp = self.decider.build_input(req, target.server, **fields)
        with tracing.span("policy.decision"):
            decision = await self.decider.decide(inp)
        hidden = not target.exists
        if target.kind is not None and (hidden or not decision.allow):
            # Uncached: a cache warmed by the agent's own list calls would answer a hidden name faster.
            hidden = not await self._visible_now(req, target) or hidden
        recorded = decision
        if not target.exists:
            recorded = Decision(False, (f"unknown {target.kind or 'target'}",), decision.revision)
        else:
            self._offer_shadow(req, inp, decision, target)
            if not hidden and not decision.allow:
                recorded = self._monitored(req, inp, decision, target)
        await self._record(req, inp, recorded, target)
        if hidden:
            await self.finish(req, "not_found" if not target.exists else "denied_hidden", 0.0)
            raise missing
        if recorded.monitor is not None:
            _monitored.set((req.decision_id, recorded.reasons))
            return dataclasses.replace(recorded, allow=True)
        return decision

    async def relayed(self, req: Request, server: str | None, **fields: Any) -> Decision:
        """Admit a message an upstream relays towards an agent; never raises: a record that cannot be written
        turns the decision into a failed one (the message is not relayed)."""
        inp = self.decider.build_input(req, server, arguments=req.arguments, **fields)
        decision = await self.decider.decide(inp)
        try:
            await self._record(req, inp, decision, Target(None, server))
        except GatewayError:
            return Decision.failed("audit record could not be written", decision.revision)
        return decision

    async def visible(self, req: Request, server: str, kind: str, name: str, annotations: dict[str, Any]) -> bool:
        """May the agent see this item in a list (cached briefly, for lists and relayed notifications)."""
        return await self.decider.visible(req, server, kind, name, annotations)

    async def finish(
        self, req: Request, outcome: str, duration_s: float, error: str | None = None, **extra: Any
    ) -> None:
        """Write the outcome record; when it cannot be written, withhold the answer: raise an error naming the
        decision id (the failure is counted in ``mcp_gateway_audit_write_failures_total``)."""
        monitored = _monitored.get()
        if monitored is not None and monitored[0] == req.decision_id:  # a denial let through: say so first
            extra = {**extra, "call_outcome": outcome, "reasons": list(monitored[1])}
            outcome = "would_deny"
        if not await self.recorder.outcome(req, outcome, duration_s, error, **extra):
            raise GatewayError(
                INTERNAL_ERROR,
                f"the gateway could not record the outcome of this request, so its result is withheld "
                f"(decision id {req.decision_id})",
            )
        _stage.set((req.decision_id, "finished"))

    def bind_progress(
        self, req: Request, on_progress: ProgressFn | None
    ) -> tuple[ProgressFn | None, Callable[[], None]]:
        """Progress of an admitted call, bound to it: relayed only while the call is in flight, only to the
        stream of the agent that made it (the agent's token, never the upstream's), and only well-formed.

        A progress notification carries no new request: it is covered by its call's decision, as the call's
        result is. The connector routes it by the token it gave that one call; this bound drops what comes
        after the call ended and anything that is not ``progress``/``total`` numbers and a ``message`` string.
        """
        if on_progress is None:
            return None, lambda: None
        live = [True]

        async def relay(params: dict[str, Any]) -> None:
            if not live[0]:
                return
            progress, total, message = params.get("progress"), params.get("total"), params.get("message")
            if not _finite(progress) or (total is not None and not _finite(total)):
                log.debug("dropped malformed progress for decision %s", req.decision_id)
                return
            clean: dict[str, Any] = {"progress": progress}
            if total is not None:
                clean["total"] = total
            if isinstance(message, str):
                clean["message"] = message
            await on_progress(clean)

        def end() -> None:
            live[0] = False

        return relay, end

    # --- parts ---------------------------------------------------------------------------------------------

    async def _visible_now(self, req: Request, target: Target) -> bool:
        """The visibility decision of ``Decider.visible`` (same input), evaluated now, not from its cache."""
        kind = target.kind or "tool"
        inp = self.decider.build_input(
            req,
            target.server,
            tool=target.name if kind == "tool" else None,
            prompt=target.name if kind == "prompt" else None,
            annotations=target.annotations,
            action=_LIST_ACTION[kind],
        )
        if kind == "resource":
            inp["resource"] = target.name
        return (await self.decider.decide(inp)).allow

    def _monitored(self, req: Request, inp: dict[str, Any], decision: Decision, target: Target) -> Decision:
        """The denial with ``monitor`` set when monitor mode lets it through; else unchanged. Only a decision the
        policy made can be monitored: not an engine failure, nor arguments refused before the engine; and never a
        request whose arguments carry a secret the scanner found (``input.findings``): a dry run must not hand a
        credential to an upstream, whatever else the decision says."""
        if decision.error is not None or isinstance(inp, RefusedInput) or inp.get("findings"):
            return decision
        tool = target.name if target.kind == "tool" else None
        why = self.monitor.why(decision, req.agent.team, req.action, target.server, tool)
        return decision if why is None else dataclasses.replace(decision, monitor=why)

    def _offer_shadow(self, req: Request, inp: dict[str, Any], decision: Decision, target: Target) -> None:
        """Offer the live decision to the shadow policy (a queue; never waits). Refused inputs never reached an
        engine, so there is nothing to compare."""
        if self.shadow is None or isinstance(inp, RefusedInput):
            return
        self.shadow.offer(
            Offered(
                req.decision_id,
                req.agent.id,
                req.agent.team,
                req.action,
                target.server,
                target.name if target.kind == "tool" else None,
                inp,
                decision,
            )
        )

    async def _record(self, req: Request, inp: dict[str, Any], decision: Decision, target: Target) -> None:
        tool = target.name if target.kind == "tool" else None
        written = await self.recorder.decision(req, inp, decision, target.server, tool)
        label = "allow" if decision.allow else ("error" if decision.error else "deny")
        if decision.monitor is not None:
            label = "would_deny"
        if not written:
            label = "error"
        server = target.server or "unknown"
        if req.action == "tools/call":
            self.metrics.count_call(
                server, tool if target.exists and tool else "unknown", req.agent.team, req.agent.id, label
            )
        else:
            self.metrics.count_request(req.action, server, req.agent.team, label)
        if not written:
            raise GatewayError(
                INTERNAL_ERROR,
                f"the gateway cannot record this request, so it was not made (decision id {req.decision_id})",
            )
        _stage.set((req.decision_id, "decided"))

    async def internal_error(self, req: Request, exc: BaseException) -> GatewayError:
        """An unexpected exception: its text goes to the log only; the records it left unwritten are written."""
        log.error("%s failed (decision id %s)", req.action, req.decision_id, exc_info=exc)
        state = _stage.get()
        stage = state[1] if state is not None and state[0] == req.decision_id else None
        if stage is None:
            decision = Decision.failed("internal gateway error", self.decider.engine.revision)
            inp = {"agent": req.agent.as_input(), "action": req.action, "resource": req.uri}
            try:
                await self._record(req, inp, decision, Target(None, req.view))
            except GatewayError:
                pass
        if stage != "finished":
            await self.recorder.outcome(req, "internal_error", 0.0, "internal gateway error")
        return GatewayError(INTERNAL_ERROR, f"internal gateway error (decision id {req.decision_id})")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def guarded(fn: F) -> F:
    """Wrap a pipeline method taking ``(self, req, ...)``: no exception but ``GatewayError`` (and cancellation)
    leaves it, and the request it was handling keeps its decision and outcome records."""

    @functools.wraps(fn)
    async def wrapper(self: Any, req: Request, *args: Any, **kwargs: Any) -> Any:
        token = _stage.set(None)
        try:
            return await fn(self, req, *args, **kwargs)
        except GatewayError:
            raise
        except Exception as exc:
            raise await self.admission.internal_error(req, exc) from None
        finally:
            _stage.reset(token)
            if self.admission.limits is not None:  # a concurrent-call slot ends with its call
                self.admission.limits.limiter.release(req.decision_id)

    return wrapper  # type: ignore[return-value]
