"""The decide stage: build the policy input for a request, ask the engine, fail closed, count it."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.identity import Agent
from gateway.metrics import Metrics
from gateway.policy import Decision, PolicyEngine

_VISIBILITY_TTL_S = 10.0
_VISIBILITY_CACHE = 50_000
_TRIMMED = "...[trimmed]"


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
    decision_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def trim(value: Any, limit: int, depth: int = 0) -> Any:
    """Cut long strings and deep structures: policy needs paths, commands and hosts, not megabytes of payload."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + _TRIMMED
    if depth > 32:
        return _TRIMMED
    if isinstance(value, dict):
        return {str(k): trim(v, limit, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [trim(v, limit, depth + 1) for v in value[:1000]]
    return value


def digest(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Decider:
    def __init__(self, engine: PolicyEngine, metrics: Metrics, max_argument_bytes: int):
        self.engine = engine
        self._metrics = metrics
        self._limit = max_argument_bytes
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
    ) -> dict[str, Any]:
        return {
            "agent": req.agent.as_input(),
            "action": action or req.action,
            "server": server,
            "tool": tool,
            "arguments": trim(arguments, self._limit) if arguments is not None else None,
            "annotations": annotations or {},
            "resource": req.uri,
            "prompt": prompt,
            "session": {"id": req.session_id, "client": req.client, "protocol_version": req.protocol_version},
            "request": {"id": req.request_id, "time_ns": req.time_ns, "remote_addr": req.remote_addr},
        }

    async def decide(self, input: dict[str, Any]) -> Decision:
        t0 = time.perf_counter()
        try:
            decision = await self.engine.decide(input)
        except Exception as exc:  # an engine that raises instead of returning a failed decision still fails closed
            decision = Decision.failed(f"engine error: {exc}", getattr(self.engine, "revision", "unknown"))
        self._metrics.decision_seconds.observe(time.perf_counter() - t0)
        if decision.error is not None:
            self._metrics.policy_errors.inc()
        return decision

    async def visible(self, req: Request, server: str, kind: str, name: str, annotations: dict[str, Any]) -> bool:
        """May this agent see this tool/prompt/resource in a list? Cached briefly per identity and revision."""
        a = req.agent
        key = (a.id, a.team, a.roles, a.auth, a.fingerprint, self.engine.revision, server, kind, name)
        now = time.monotonic()
        hit = self._visible.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
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
        decision = await self.decide(inp)
        self._visible[key] = (now + _VISIBILITY_TTL_S, decision.allow)
        if len(self._visible) > _VISIBILITY_CACHE:
            self._visible.popitem(last=False)
        return decision.allow
