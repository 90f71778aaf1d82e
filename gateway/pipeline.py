"""The call pipeline: route -> decide -> record -> forward -> record, for every policy-checked MCP request.

Authentication happens before (in the HTTP front end, which hands over an Agent); the pipeline knows nothing
of HTTP or of the SDK, so a leaner front end can replace the SDK one without touching it.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from connectors.jsonrpc import ProgressFn, RemoteError, UpstreamError
from gateway import tracing
from gateway.catalog import Catalog, Upstream, public_name
from gateway.containment.scope import CallScope, is_contained
from gateway.decide import Decider, Request
from gateway.forward import DENIED, RESOURCE_NOT_FOUND, UNKNOWN_TOOL, UPSTREAM_FAILED, GatewayError, forward
from gateway.metrics import Metrics
from gateway.policy import Decision
from gateway.record import Recorder
from gateway.relay import AgentSession, Relay


def denial_text(decision: Decision, decision_id: str) -> str:
    reasons = "; ".join(decision.reasons) or "no rule allows this request"
    return f"Denied by policy: {reasons}. (decision id {decision_id})"


class Pipeline:
    def __init__(self, catalog: Catalog, decider: Decider, recorder: Recorder, metrics: Metrics):
        self.catalog = catalog
        self.decider = decider
        self.recorder = recorder
        self.metrics = metrics
        self.relay = Relay(catalog, decider, recorder, metrics)

    # --- tools ---------------------------------------------------------------------------------------------

    async def list_tools(self, req: Request) -> dict[str, Any]:
        ups = await self._list_gate(req, "tools/list")
        tools = []
        for up in ups:
            for name, tool in up.tools.items():
                if await self.decider.visible(req, up.name, "tool", name, tool.get("annotations") or {}):
                    tools.append({**tool, "name": public_name(up.name, name, req.view)} if req.view is None else tool)
        return {"tools": tools}

    async def call_tool(self, req: Request, on_progress: ProgressFn | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        up, tool_name = self.catalog.split(req.name or "", req.view)
        tool = up.tools.get(tool_name) if up is not None else None
        server = up.name if up is not None else req.view
        team, agent = req.agent.team, req.agent.id
        inp = self.decider.build_input(
            req, server, tool=tool_name, annotations=(tool or {}).get("annotations"), arguments=req.arguments or {}
        )
        if up is None or tool is None:
            # Unknown tools are decided and recorded too: probing for names leaves a trace.
            decision = Decision(False, ("unknown tool",), self.decider.engine.revision)
            self.recorder.decision(req, inp, decision, server, tool_name)
            self.metrics.count_call(server or "unknown", "unknown", team, agent, "deny")
            raise GatewayError(UNKNOWN_TOOL, f"Unknown tool: {req.name}")
        with tracing.span("policy.decision"):
            decision = await self.decider.decide(inp)
        if not self.recorder.decision(req, inp, decision, up.name, tool_name):
            self.metrics.count_call(up.name, tool_name, team, agent, "error")
            raise GatewayError(UPSTREAM_FAILED, "the gateway cannot record this call, so it was not made")
        if not decision.allow:
            self.metrics.count_call(up.name, tool_name, team, agent, "error" if decision.error else "deny")
            if not decision.error and not await self.decider.visible(
                req, up.name, "tool", tool_name, tool.get("annotations") or {}
            ):
                self.recorder.outcome(req, "denied_hidden", time.perf_counter() - t0)
                raise GatewayError(UNKNOWN_TOOL, f"Unknown tool: {req.name}")
            self.recorder.outcome(req, "denied", time.perf_counter() - t0)
            return {
                "content": [{"type": "text", "text": denial_text(decision, req.decision_id)}],
                "isError": True,
                "_meta": {"gateway/decision_id": req.decision_id},
            }
        self.metrics.count_call(up.name, tool_name, team, agent, "allow")
        params = {"name": tool_name, "arguments": req.arguments or {}}
        # The policy may narrow the worker's containment for this call (never widen it); a narrowing for an
        # upstream that is not contained cannot be honoured, so the call is refused rather than run wider.
        contained = CallScope(decision.result.get("containment"))
        if contained.narrowing is not None and not is_contained(up.conn):
            self._done(req, up, t0, "upstream_error", "containment", "policy narrowed containment of an uncontained"
                       " upstream")
            raise GatewayError(DENIED, f"the policy asks for containment, but {up.name} is not a contained upstream"
                               f" (decision id {req.decision_id})")
        try:
            with tracing.forward_span(up.name, "tools/call"), contained:
                result = await forward(
                    self.metrics, up, req, "tools/call", params, up.timeout_for(tool_name), on_progress
                )
        except UpstreamError as exc:
            self._done(req, up, t0, "upstream_error", exc.kind, str(exc), **contained.audit())
            raise GatewayError(UPSTREAM_FAILED, f"{exc} (decision id {req.decision_id})") from None
        except RemoteError as exc:
            self._done(req, up, t0, "upstream_error", "remote_error", exc.message, **contained.audit())
            raise GatewayError(exc.code, exc.message, exc.data) from None
        except anyio.get_cancelled_exc_class():
            # The agent cancelled or went away: the upstream was told (connectors send notifications/cancelled);
            # the record says so, so no forwarded decision is left without its outcome.
            self._done(req, up, t0, "cancelled", **contained.audit())
            raise
        self._done(req, up, t0, "tool_error" if result.get("isError") else "ok", **contained.audit())
        return result

    def _done(self, req: Request, up: Upstream, t0: float, outcome: str, kind: str | None = None,
              error: str | None = None, **extra: Any):
        elapsed = time.perf_counter() - t0
        self.metrics.observe_call(up.name, elapsed)
        self.recorder.outcome(req, outcome, elapsed, error, **({"error_kind": kind} if kind else {}), **extra)

    # --- prompts -------------------------------------------------------------------------------------------

    async def list_prompts(self, req: Request) -> dict[str, Any]:
        ups = await self._list_gate(req, "prompts/list")
        prompts = []
        for up in ups:
            for name, prompt in up.prompts.items():
                if await self.decider.visible(req, up.name, "prompt", name, {}):
                    prompts.append({**prompt, "name": public_name(up.name, name, req.view)})
        return {"prompts": prompts}

    async def get_prompt(self, req: Request) -> dict[str, Any]:
        up, prompt_name = self.catalog.split(req.name or "", req.view)
        known = up is not None and prompt_name in up.prompts
        server = up.name if up is not None else req.view
        inp = self.decider.build_input(req, server, prompt=prompt_name, arguments=req.arguments or {})
        decision = await self._gate(req, inp, server, None, known)
        if not known or up is None:
            raise GatewayError(UNKNOWN_TOOL, f"Unknown prompt: {req.name}")
        if not decision.allow:
            hidden = decision.error is None and not await self.decider.visible(req, up.name, "prompt", prompt_name, {})
            if hidden:
                raise GatewayError(UNKNOWN_TOOL, f"Unknown prompt: {req.name}")
            raise GatewayError(DENIED, denial_text(decision, req.decision_id))
        params: dict[str, Any] = {"name": prompt_name}
        if req.arguments:
            params["arguments"] = req.arguments
        return await self._forward_simple(req, up, "prompts/get", params)

    # --- resources -----------------------------------------------------------------------------------------

    async def list_resources(self, req: Request) -> dict[str, Any]:
        ups = await self._list_gate(req, "resources/list")
        out = []
        for up in ups:
            for uri, res in up.resources.items():
                if req.view is None and self.catalog.resource_owner(uri, None) is not up:
                    continue
                if await self.decider.visible(req, up.name, "resource", uri, res.get("annotations") or {}):
                    out.append(res)
        return {"resources": out}

    async def list_resource_templates(self, req: Request) -> dict[str, Any]:
        ups = await self._list_gate(req, "resources/list")
        return {"resourceTemplates": [t for up in ups for t in up.templates]}

    async def read_resource(self, req: Request) -> dict[str, Any]:
        up = self.catalog.resource_owner(req.uri or "", req.view)
        server = up.name if up is not None else req.view
        inp = self.decider.build_input(req, server)
        decision = await self._gate(req, inp, server, None, up is not None)
        if up is None:
            raise GatewayError(RESOURCE_NOT_FOUND, f"Resource not found: {req.uri}")
        if not decision.allow:
            if decision.error is None and req.uri in up.resources and not await self.decider.visible(
                req, up.name, "resource", req.uri or "", {}
            ):
                raise GatewayError(RESOURCE_NOT_FOUND, f"Resource not found: {req.uri}")
            raise GatewayError(DENIED, denial_text(decision, req.decision_id))
        return await self._forward_simple(req, up, "resources/read", {"uri": req.uri})

    # --- shared --------------------------------------------------------------------------------------------

    async def _gate(
        self, req: Request, inp: dict[str, Any], server: str | None, tool: str | None, known: bool
    ) -> Decision:
        """Decide and record a non-tool request; unknown targets are recorded as denials without asking policy."""
        if known:
            with tracing.span("policy.decision"):
                decision = await self.decider.decide(inp)
        else:
            decision = Decision(False, ("unknown target",), self.decider.engine.revision)
        written = self.recorder.decision(req, inp, decision, server, tool)
        if not written:
            raise GatewayError(UPSTREAM_FAILED, "the gateway cannot record this request, so it was not made")
        label = "allow" if decision.allow else ("error" if decision.error else "deny")
        self.metrics.count_request(req.action, server or "unknown", req.agent.team, label)
        return decision

    async def _list_gate(self, req: Request, action: str) -> list[Upstream]:
        if req.view is not None and self.catalog.get(req.view) is None:
            raise GatewayError(UNKNOWN_TOOL, f"Unknown server: {req.view}")
        inp = self.decider.build_input(req, req.view, action=action)
        decision = await self._gate(req, inp, req.view, None, True)
        if not decision.allow:
            raise GatewayError(DENIED, denial_text(decision, req.decision_id))
        return [up for up in self.catalog.in_view(req.view) if up.conn.up]

    async def _forward_simple(self, req: Request, up: Upstream, method: str, params: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            with tracing.forward_span(up.name, method):
                result = await forward(self.metrics, up, req, method, params, up.config.timeout_s)
        except UpstreamError as exc:
            self.recorder.outcome(req, "upstream_error", time.perf_counter() - t0, str(exc), error_kind=exc.kind)
            raise GatewayError(UPSTREAM_FAILED, f"{exc} (decision id {req.decision_id})") from None
        except RemoteError as exc:
            self.recorder.outcome(req, "upstream_error", time.perf_counter() - t0, exc.message)
            raise GatewayError(exc.code, exc.message, exc.data) from None
        self.recorder.outcome(req, "ok", time.perf_counter() - t0)
        return result

    # --- relayed requests: logging level, subscriptions, completion ----------------------------------------

    def session_of(self, req: Request) -> AgentSession | None:
        return self.relay.sessions.get(req.session_id) if req.session_id else None

    async def _simple_gate(self, req: Request, up: Upstream | None, server: str | None, **fields: Any) -> Upstream:
        inp = self.decider.build_input(req, server, **fields)
        decision = await self._gate(req, inp, server, None, up is not None)
        if up is None:
            code = RESOURCE_NOT_FOUND if req.uri is not None else UNKNOWN_TOOL
            raise GatewayError(code, f"Unknown target of {req.action}")
        if not decision.allow:
            raise GatewayError(DENIED, denial_text(decision, req.decision_id))
        return up

    async def set_log_level(self, req: Request, level: str) -> dict[str, Any]:
        """Policy-checked; the level filters what the relay passes on and goes to this session's own upstreams."""
        if req.view is not None and self.catalog.get(req.view) is None:
            raise GatewayError(UNKNOWN_TOOL, f"Unknown server: {req.view}")
        inp = self.decider.build_input(req, req.view, arguments={"level": level})
        decision = await self._gate(req, inp, req.view, None, True)
        if not decision.allow:
            raise GatewayError(DENIED, denial_text(decision, req.decision_id))
        session = self.session_of(req)
        if session is not None:
            await self.relay.set_level(session, level, self.catalog.in_view(req.view))
        self.recorder.outcome(req, "ok", 0.0)
        return {}

    async def _subscription(self, req: Request, subscribe: bool) -> dict[str, Any]:
        uri = req.uri or ""
        owner = self.catalog.resource_owner(uri, req.view)
        up = await self._simple_gate(req, owner, owner.name if owner else req.view)
        if not (up.conn.capabilities.get("resources") or {}).get("subscribe"):
            raise GatewayError(-32601, f"{req.action} is not supported by this server")
        session = self.session_of(req)
        if session is None:
            raise GatewayError(-32600, f"{req.action} needs an MCP session (the 2025 protocol era)")
        t0 = time.perf_counter()

        async def send(method: str, params: dict[str, Any]) -> dict[str, Any]:
            return await self._forward_raw(req, up, method, params)

        try:
            if subscribe:
                result = await self.relay.subscribe(session, up, uri, send)
            else:
                result = await self.relay.unsubscribe(session, up, uri, send)
        except GatewayError as exc:
            self.recorder.outcome(req, "upstream_error", time.perf_counter() - t0, exc.message)
            raise
        self.recorder.outcome(req, "ok", time.perf_counter() - t0)
        return result

    async def subscribe(self, req: Request) -> dict[str, Any]:
        return await self._subscription(req, True)

    async def unsubscribe(self, req: Request) -> dict[str, Any]:
        return await self._subscription(req, False)

    async def complete(self, req: Request, params: dict[str, Any]) -> dict[str, Any]:
        """completion/complete for a prompt argument or a resource template, routed like the prompt or resource."""
        raw_ref, raw_arg = params.get("ref"), params.get("argument")
        ref: dict[str, Any] = raw_ref if isinstance(raw_ref, dict) else {}
        argument: dict[str, Any] = raw_arg if isinstance(raw_arg, dict) else {}
        if ref.get("type") == "ref/prompt":
            up, name = self.catalog.split(str(ref.get("name", "")), req.view)
            known = up if up is not None and name in up.prompts else None
            target = await self._simple_gate(
                req, known, up.name if up else req.view, prompt=name, arguments=argument
            )
            ref = {**ref, "name": name}
        elif ref.get("type") == "ref/resource":
            req.uri = str(ref.get("uri", ""))
            up = self.catalog.resource_owner(req.uri, req.view)
            target = await self._simple_gate(req, up, up.name if up else req.view, arguments=argument)
        else:
            raise GatewayError(UNKNOWN_TOOL, "completion/complete needs a ref of type ref/prompt or ref/resource")
        if "completions" not in target.conn.capabilities:
            self.recorder.outcome(req, "ok", 0.0)
            return {"completion": {"values": [], "hasMore": False}}
        return await self._forward_simple(req, target, "completion/complete", {**params, "ref": ref})

    async def roots_changed(self, session: AgentSession) -> None:
        """The agent's roots changed: tell the upstream sessions that serve it (shared ones never asked)."""
        for name, conn in self.catalog.session_upstreams.connections(session.id):
            if not (conn.up and "roots" in conn.client_capabilities):
                continue
            if await self.relay.notification_allowed(session, name, "notifications/roots/list_changed"):
                try:
                    await conn.notify("notifications/roots/list_changed")
                except UpstreamError:
                    pass

    async def _forward_raw(self, req: Request, up: Upstream, method: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            return await forward(self.metrics, up, req, method, params, up.config.timeout_s)
        except UpstreamError as exc:
            raise GatewayError(UPSTREAM_FAILED, f"{exc} (decision id {req.decision_id})") from None
        except RemoteError as exc:
            raise GatewayError(exc.code, exc.message, exc.data) from None
