"""The decide stage: build the policy input for a request, ask the engine, fail closed, count it."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.audit import new_decision_id
from gateway.config import PolicyConfig
from gateway.identity import Agent
from gateway.metrics import Metrics
from gateway.policy import Decision, PolicyEngine
from gateway.policy.bounds import Limits, Refused, check

_VISIBILITY_TTL_S = 10.0
_VISIBILITY_CACHE = 50_000


@dataclass(slots=True)
class Request:
    """One agent request as every stage sees it, free of transport and SDK types."""

    agent: Agent
    action: str
    view: str | None
    """None for the aggregate endpoint ``/mcp``; the upstream's name for ``/mcp/<upstream>``."""
    name: str | None = None
    """The agent-facing tool or prompt name."""
    arguments: dict[str, Any] | None = None
    uri: str | None = None
    session_id: str | None = None
    client: dict[str, Any] = field(default_factory=dict)
    protocol_version: str | None = None
    request_id: Any = None
    remote_addr: str | None = None
    time_ns: int = field(default_factory=time.time_ns)
    decision_id: str = field(default_factory=new_decision_id)


class RefusedInput(dict[str, Any]):
    """A policy input whose arguments the policy cannot see whole: ``Decider.decide`` refuses it without asking the
    engine. It is still a plain dict (the audit records it as any input), with the arguments left out."""

    refusal: str = ""


def limits_from(cfg: PolicyConfig) -> Limits:
    return Limits(
        cfg.max_argument_bytes,
        cfg.max_argument_string,
        cfg.max_argument_keys,
        cfg.max_argument_items,
        cfg.max_argument_depth,
    )


def digest(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Decider:
    def __init__(self, engine: PolicyEngine, metrics: Metrics, limits: Limits | int):
        self.engine = engine
        self._metrics = metrics
        self._limits = limits if isinstance(limits, Limits) else Limits(max_bytes=limits)
        self._visible: OrderedDict[tuple[Any, ...], tuple[float, bool]] = OrderedDict()

    def build_input(
        self,
        req: Request,
        server: str | None,
        tool: str | None = None,
        annotations: dict[str, Any] | None = None,
        prompt: str | None = None,
        action: str | None = None,
        arguments: Any = None,
        usage: dict[str, Any] | None = None,
        integrity: dict[str, Any] | None = None,
        findings: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        """The policy input for this request. Arguments the policy cannot see whole (``refusal``) give a
        ``RefusedInput``: its arguments are left out, and ``decide`` refuses it without asking the engine, so every
        path that decides (calls, prompts, completions, relayed messages, the fast path) refuses it alike."""
        refused = self.refusal(arguments)
        if refused is None and req.uri is not None:  # a resource URI is forwarded too: the same bounds
            refused = self._refused(req.uri, "resource")
        inp = RefusedInput() if refused is not None else {}
        inp.update(
            {
                "agent": req.agent.as_input(),
                "action": action or req.action,
                "server": server,
                "tool": tool,
                "arguments": arguments if refused is None else None,
                "annotations": annotations or {},
                "resource": req.uri,
                "prompt": prompt,
                "session": {"id": req.session_id, "client": req.client, "protocol_version": req.protocol_version},
                "request": {"id": req.request_id, "time_ns": req.time_ns, "remote_addr": req.remote_addr},
                "integrity": integrity,  # the named tool's or prompt's {locked, digest} (gateway/integrity)
            }
        )
        if usage is not None:  # [[limits]] (fleet): {limit: {used, limit, window_s}}
            inp["usage"] = usage
        if findings is not None:  # secrets in the arguments (gateway/secrets): kind and path, never the value
            inp["findings"] = findings
        if isinstance(inp, RefusedInput) and refused is not None:
            inp.refusal = refused
        return inp

    def refusal(self, arguments: Any) -> str | None:
        """Why the policy cannot see these arguments whole (``arguments exceed what the policy can see: ...``), or
        None. The policy decides on exactly what is forwarded, so what it cannot see is not forwarded."""
        return None if arguments is None else self._refused(arguments, "arguments")

    def _refused(self, value: Any, root: str) -> str | None:
        try:
            check(value, self._limits, root)
        except Refused as exc:
            return exc.reason
        return None

    async def decide(self, input: dict[str, Any]) -> Decision:
        if isinstance(input, RefusedInput):
            return Decision(False, (input.refusal,), getattr(self.engine, "revision", "unknown"))
        t0 = time.perf_counter()
        try:
            decision = await self.engine.decide(input)
        except Exception as exc:  # an engine that raises instead of returning a failed decision still fails closed
            decision = Decision.failed(f"engine error: {exc}", getattr(self.engine, "revision", "unknown"))
        self._metrics.decision_seconds.observe(time.perf_counter() - t0)
        if decision.error is not None:
            self._metrics.policy_errors.inc()
        return decision

    async def decide_many(self, inputs: list[dict[str, Any]]) -> list[Decision]:
        """``decide`` for several inputs: one call into an engine that decides a batch (the embedded engine, on one
        revision), else one decision after another."""
        many = getattr(self.engine, "decide_many", None)
        plain = [i for i in inputs if not isinstance(i, RefusedInput)]
        if many is None or len(plain) < 2:
            return [await self.decide(i) for i in inputs]
        t0 = time.perf_counter()
        try:
            batch: list[Decision] = await many(plain)
        except Exception as exc:  # fails closed, as decide does
            failed = Decision.failed(f"engine error: {exc}", getattr(self.engine, "revision", "unknown"))
            batch = [failed] * len(plain)
        share = (time.perf_counter() - t0) / len(plain)
        decided = iter(batch)
        out = []
        for inp in inputs:
            if isinstance(inp, RefusedInput):
                out.append(await self.decide(inp))
                continue
            decision = next(decided)
            self._metrics.decision_seconds.observe(share)
            if decision.error is not None:
                self._metrics.policy_errors.inc()
            out.append(decision)
        return out

    def _list_input(
        self, req: Request, server: str, kind: str, name: str, annotations: dict[str, Any]
    ) -> dict[str, Any]:
        action = {"tool": "tools/list", "prompt": "prompts/list", "resource": "resources/list"}[kind]
        inp = self.build_input(
            req,
            server,
            tool=name if kind == "tool" else None,
            prompt=name if kind == "prompt" else None,
            annotations=annotations,
            action=action,
        )
        if kind == "resource":
            inp["resource"] = name
        return inp

    def _list_inputs(
        self, req: Request, server: str, kind: str, items: list[tuple[str, dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """``_list_input`` for each item: the first built whole, the others as copies of it with the item's name and
        annotations (the rest of a list item's input is the request's, the same for every item)."""
        if not items:
            return []
        first = self._list_input(req, server, kind, *items[0])
        if isinstance(first, RefusedInput):
            return [first, *(self._list_input(req, server, kind, n, a) for n, a in items[1:])]
        field = {"tool": "tool", "prompt": "prompt", "resource": "resource"}[kind]
        return [first, *({**first, field: name, "annotations": a or {}} for name, a in items[1:])]

    async def visible_many(
        self, req: Request, server: str, kind: str, items: list[tuple[str, dict[str, Any]]]
    ) -> list[bool]:
        """``visible`` for a list's items (name, annotations) at once: cached ones from the cache, the others
        decided in one batch on one revision (one call into the embedded engine), then cached. Hidden-equals-missing
        checks of a single item (admission) still use ``visible``, item by item."""
        a = req.agent
        base = (a.id, a.team, a.roles, a.auth, a.fingerprint)
        rev = self.engine.revision
        now = time.monotonic()
        out: list[bool] = [False] * len(items)
        todo: list[tuple[int, str]] = []
        for i, (name, _annotations) in enumerate(items):
            hit = self._visible.get((*base, rev, server, kind, name))
            if hit is not None and hit[0] > now:
                out[i] = hit[1]
            else:
                todo.append((i, name))
        if not todo:
            return out
        decisions = await self.decide_many(self._list_inputs(req, server, kind, [items[i] for i, _ in todo]))
        for (i, name), decision in zip(todo, decisions, strict=True):
            out[i] = decision.allow
            self._visible[(*base, decision.revision, server, kind, name)] = (now + _VISIBILITY_TTL_S, decision.allow)
        while len(self._visible) > _VISIBILITY_CACHE:
            self._visible.popitem(last=False)
        return out

    async def visible(self, req: Request, server: str, kind: str, name: str, annotations: dict[str, Any]) -> bool:
        """May this agent see this tool/prompt/resource in a list? Cached briefly per identity and revision."""
        a = req.agent
        key = (a.id, a.team, a.roles, a.auth, a.fingerprint, self.engine.revision, server, kind, name)
        now = time.monotonic()
        hit = self._visible.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        decision = await self.decide(self._list_input(req, server, kind, name, annotations))
        self._visible[key] = (now + _VISIBILITY_TTL_S, decision.allow)
        if len(self._visible) > _VISIBILITY_CACHE:
            self._visible.popitem(last=False)
        return decision.allow
