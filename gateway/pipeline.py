"""The call pipeline: route -> admit (decide, record, count) -> forward -> record, for every MCP request kind.

Authentication happens before (in the HTTP front end, which hands over an Agent); the pipeline knows nothing
of HTTP or of the SDK, so a leaner front end can replace the SDK one without touching it. Every request kind
routes its name to a ``Target`` and goes through ``Admission.admit`` (``gateway/admission.py``), which treats a
hidden item as a missing one; every public method is ``guarded``, so no internal exception text reaches an agent.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import anyio

from connectors.jsonrpc import ProgressFn, RemoteError, UpstreamError
from gateway import tracing
from gateway.admission import Admission, Target, guarded
from gateway.catalog import Catalog, Upstream, public_name
from gateway.containment.scope import CallScope, is_contained
from gateway.decide import Decider, Request
from gateway.errors import (
    DENIED,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    RESOURCE_NOT_FOUND,
    UNKNOWN_TOOL,
    UPSTREAM_FAILED,
    GatewayError,
)
from gateway.forward import forward
from gateway.identity import Agent
from gateway.metrics import Metrics
from gateway.policy import Decision
from gateway.record import Recorder
from gateway.relay import AgentSession, Relay
from gateway.secrets import SecretScanning


def denial_text(decision: Decision, decision_id: str) -> str:
    reasons = "; ".join(decision.reasons) or "no rule allows this request"
    return f"Denied by policy: {reasons}. (decision id {decision_id})"


def withheld_text(findings: list[dict[str, str]], decision_id: str) -> str:
    found = "; ".join(f"{f['kind']} at {f['path']}" for f in findings)
    return f"The result was withheld: it carried a secret ({found}). (decision id {decision_id})"


class Pipeline:
    def __init__(
        self,
        catalog: Catalog,
        decider: Decider,
        recorder: Recorder,
        metrics: Metrics,
        secrets: SecretScanning | None = None,
    ):
        self.catalog = catalog
        self.secrets = secrets if secrets is not None else SecretScanning()
        self.decider = decider
        self.recorder = recorder
        self.metrics = metrics
        self.admission = Admission(decider, recorder, metrics)
        self.relay = Relay(catalog, self.admission)

    # --- routing: what a request names ---------------------------------------------------------------------

    def _tool(self, name: str, view: str | None) -> tuple[Upstream | None, str, Target]:
        up, tool_name = self.catalog.split(name, view)
        tool = up.tools.get(tool_name) if up is not None else None
        server = up.name if up is not None else view
        annotations = (tool or {}).get("annotations") or {}
        return up, tool_name, Target("tool", server, tool_name, tool is not None, annotations)

    def _prompt(self, name: str, view: str | None) -> tuple[Upstream | None, str, Target]:
        up, prompt_name = self.catalog.split(name, view)
        known = up is not None and prompt_name in up.prompts
        return up, prompt_name, Target("prompt", up.name if up is not None else view, prompt_name, known)

    def _resource(self, uri: str, view: str | None) -> tuple[Upstream | None, Target]:
        """A URI exists when its upstream lists it or one of its templates matches it; anything else is missing
        at the gateway (never forwarded), so a hidden URI and an unknown one get the gateway's same answer."""
        up = self.catalog.resource_owner(uri, view)
        res = up.resources.get(uri) if up is not None else None
        known = up is not None and (res is not None or up.matches_template(uri))
        annotations = (res or {}).get("annotations") or {}
        return up, Target("resource", up.name if up is not None else view, uri, known, annotations)

    async def view_visible(self, agent: Agent, view: str) -> bool:
        """May this agent see the upstream behind ``/mcp/<view>``? When it may see any of its items (the cached
        per-item list decisions); an upstream that lists nothing yet, when its catalogue decision allows."""
        up = self.catalog.get(view)
        if up is None:
            return False
        req = Request(agent=agent, action="tools/list", view=view)
        items = [("tool", n, i) for n, i in up.tools.items()] + [("prompt", n, i) for n, i in up.prompts.items()]
        items += [("resource", uri, i) for uri, i in up.resources.items()]
        items += [("resource", str(t.get("uriTemplate", "")), t) for t in up.templates]
        for kind, name, item in items:
            if await self.decider.visible(req, view, kind, name, item.get("annotations") or {}):
                return True
        if items:
            return False
        return (await self.decider.decide(self.decider.build_input(req, view, action="tools/list"))).allow

    # --- tools ---------------------------------------------------------------------------------------------

    @guarded
    async def list_tools(self, req: Request) -> dict[str, Any]:
        return {"tools": await self._list_named(req, "tool")}

    @guarded
    async def call_tool(self, req: Request, on_progress: ProgressFn | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        up, tool_name, decision = await self._admit_named(req, "tool")
        if not decision.allow:
            await self.admission.finish(req, "denied", time.perf_counter() - t0)
            return {
                "content": [{"type": "text", "text": denial_text(decision, req.decision_id)}],
                "isError": True,
                "_meta": {"gateway/decision_id": req.decision_id},
            }
        params = {"name": tool_name, "arguments": req.arguments or {}}
        # The policy may narrow the worker's containment for this call (never widen it); a narrowing for an
        # upstream that is not contained cannot be honoured, so the call is refused rather than run wider.
        contained = CallScope(decision.result.get("containment"))
        if contained.narrowing is not None and not is_contained(up.conn):
            await self._done(
                req, up, t0, "upstream_error", "containment", "policy narrowed containment of an uncontained upstream"
            )
            raise GatewayError(
                DENIED,
                f"the policy asks for containment, but {up.name} is not a contained upstream"
                f" (decision id {req.decision_id})",
            )
        progress, end_progress = self.admission.bind_progress(req, on_progress)
        try:
            with tracing.forward_span(up.name, "tools/call"), contained:
                result = await forward(self.metrics, up, req, "tools/call", params, up.timeout_for(tool_name), progress)
        except UpstreamError as exc:
            await self._done(req, up, t0, "upstream_error", exc.kind, str(exc), **contained.audit())
            raise GatewayError(UPSTREAM_FAILED, f"{exc} (decision id {req.decision_id})") from None
        except RemoteError as exc:
            await self._done(req, up, t0, "upstream_error", "remote_error", exc.message, **contained.audit())
            raise GatewayError(exc.code, exc.message, exc.data) from None
        except anyio.get_cancelled_exc_class():
            # The agent cancelled or went away: the upstream was told (connectors send notifications/cancelled);
            # the record says so, so no forwarded decision is left without its outcome.
            await self.recorder.outcome(req, "cancelled", time.perf_counter() - t0, **contained.audit())
            raise
        finally:
            end_progress()
        outcome = "tool_error" if result.get("isError") else "ok"
        result, found = self._scan_result(req, up.name, tool_name, result)
        if found.get("secrets_action") == "withheld":
            text = withheld_text(found["secrets"], req.decision_id)
            result = {
                "content": [{"type": "text", "text": text}],
                "isError": True,
                "_meta": {"gateway/decision_id": req.decision_id},
            }
        await self._done(req, up, t0, outcome, **contained.audit(), **found)
        return result

    async def _done(
        self,
        req: Request,
        up: Upstream,
        t0: float,
        outcome: str,
        kind: str | None = None,
        error: str | None = None,
        **extra: Any,
    ) -> None:
        elapsed = time.perf_counter() - t0
        self.metrics.observe_call(up.name, elapsed)
        await self.admission.finish(req, outcome, elapsed, error, **({"error_kind": kind} if kind else {}), **extra)

    # --- prompts -------------------------------------------------------------------------------------------

    @guarded
    async def list_prompts(self, req: Request) -> dict[str, Any]:
        return {"prompts": await self._list_named(req, "prompt")}

    @guarded
    async def get_prompt(self, req: Request) -> dict[str, Any]:
        up, prompt_name, decision = await self._admit_named(req, "prompt")
        await self._refuse_denied(req, decision)
        params: dict[str, Any] = {"name": prompt_name}
        if req.arguments:
            params["arguments"] = req.arguments
        return await self._forward_simple(req, up, "prompts/get", params)

    # --- resources -----------------------------------------------------------------------------------------

    @guarded
    async def list_resources(self, req: Request) -> dict[str, Any]:
        ups = await self._list_gate(req, "resources/list")
        out = []
        for up in ups:
            owned = [
                (uri, res)
                for uri, res in up.resources.items()
                if req.view is not None or self.catalog.resource_owner(uri, None) is up
            ]
            asked = [(uri, res.get("annotations") or {}) for uri, res in owned]
            seen = await self.decider.visible_many(req, up.name, "resource", asked)
            out += [res for (_uri, res), shown in zip(owned, seen, strict=True) if shown]
            if any(seen):
                self._shown(req, up, "resources")
        await self.admission.finish(req, "ok", 0.0)
        return {"resources": out}

    @guarded
    async def list_resource_templates(self, req: Request) -> dict[str, Any]:
        """Templates are filtered like resources: each is an item the agent may or may not see."""
        ups = await self._list_gate(req, "resources/list")
        out = []
        for up in ups:
            for t in up.templates:
                uri_template = str(t.get("uriTemplate", ""))
                if await self.decider.visible(req, up.name, "resource", uri_template, t.get("annotations") or {}):
                    out.append(t)
        await self.admission.finish(req, "ok", 0.0)
        return {"resourceTemplates": out}

    @guarded
    async def read_resource(self, req: Request) -> dict[str, Any]:
        up = await self._admit_resource(req)
        return await self._forward_simple(req, up, "resources/read", {"uri": req.uri})

    # --- shared --------------------------------------------------------------------------------------------

    async def _list_named(self, req: Request, kind: Literal["tool", "prompt"]) -> list[dict[str, Any]]:
        """The tools or prompts the agent may see, under the names it calls them by; closes the request."""
        ups = await self._list_gate(req, f"{kind}s/list")
        out = []
        for up in ups:
            listed = list((up.tools if kind == "tool" else up.prompts).items())
            # prompts have no annotations; the items are decided in one batch (Decider.visible_many)
            asked = [(name, (item.get("annotations") or {}) if kind == "tool" else {}) for name, item in listed]
            seen = await self.decider.visible_many(req, up.name, kind, asked)
            if req.view is None:  # the aggregate: each item under its public name
                out += [
                    {**item, "name": public_name(up.name, name, None)}
                    for (name, item), shown in zip(listed, seen, strict=True)
                    if shown
                ]
            else:
                out += [item for (_name, item), shown in zip(listed, seen, strict=True) if shown]
            if any(seen):
                self._shown(req, up, f"{kind}s")
        await self.admission.finish(req, "ok", 0.0)
        return out

    async def _admit_named(self, req: Request, kind: Literal["tool", "prompt"]) -> tuple[Upstream, str, Decision]:
        """Check the name, route it and decide it: a missing or hidden one raises the same unknown-name error."""
        await self.admission.check_name(req, kind)
        up, name, target = (self._tool if kind == "tool" else self._prompt)(req.name or "", req.view)
        fields: dict[str, Any] = {kind: name}
        if kind == "tool":
            fields["annotations"] = target.annotations
        fields["arguments"] = req.arguments or {}
        fields["integrity"] = self.catalog.integrity.of(target.server, kind, name)  # the tool lock's word on it
        findings = self._scan_arguments(req, target.server, name)
        if findings is not None:
            fields["findings"] = findings
        decision = await self.admission.admit(
            req, target, GatewayError(UNKNOWN_TOOL, f"Unknown {kind}: {req.name}"), **fields
        )
        assert up is not None
        return up, name, decision

    async def _admit_resource(self, req: Request) -> Upstream:
        """Route and decide the URI a request names; a missing, hidden or denied one raises."""
        up, target = self._resource(req.uri or "", req.view)
        decision = await self.admission.admit(
            req, target, GatewayError(RESOURCE_NOT_FOUND, f"Resource not found: {req.uri}")
        )
        assert up is not None
        await self._refuse_denied(req, decision)
        return up

    async def _refuse_denied(self, req: Request, decision: Decision) -> None:
        if not decision.allow:
            await self.admission.finish(req, "denied", 0.0)
            raise GatewayError(DENIED, denial_text(decision, req.decision_id))

    async def _list_gate(self, req: Request, action: str) -> list[Upstream]:
        exists = req.view is None or self.catalog.get(req.view) is not None
        decision = await self.admission.admit(
            req,
            Target(None, req.view, exists=exists),
            GatewayError(UNKNOWN_TOOL, f"Unknown server: {req.view}"),
            action=action,
        )
        await self._refuse_denied(req, decision)
        return [up for up in self.catalog.in_view(req.view) if up.conn.up]

    def _shown(self, req: Request, up: Upstream, kind: str) -> None:
        """Remember which upstreams' lists this session was shown items of: their list_changed concern it."""
        session = self.session_of(req)
        if session is not None:
            session.shown.add((up.name, kind))

    # --- secrets: arguments before the decision, results before the agent ------------------------------------

    def _scan_arguments(self, req: Request, server: str | None, name: str) -> list[dict[str, str]] | None:
        """The findings in the arguments, for ``input.findings`` (None when scanning is off for this item)."""
        rules = self.secrets.rules(server, name)
        if not rules.scan_arguments:
            return None
        found = rules.scanner.scan(req.arguments or {}, "arguments", "arguments")
        for f in found:
            self.metrics.count_secret(server or "unknown", f.kind, "arguments")
        return [f.as_dict() for f in found]

    def _scan_result(
        self, req: Request, server: str, name: str, result: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Scan a result before it reaches the agent: redact its secrets in place, or mark it withheld. Returns
        the result and the outcome record's fields (kinds and paths, never values)."""
        rules = self.secrets.rules(server, name)
        if not rules.scan_results:
            return result, {}
        withhold = rules.on_result == "withhold"
        found = rules.scanner.scan(result, "result", "result", redact=not withhold)
        if not found:
            return result, {}
        for f in found:
            self.metrics.count_secret(server, f.kind, "result")
        action = "withheld" if withhold else "redacted"
        return result, {"secrets": [f.as_dict() for f in found], "secrets_action": action}

    async def _forward_simple(self, req: Request, up: Upstream, method: str, params: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            with tracing.forward_span(up.name, method):
                result = await forward(self.metrics, up, req, method, params, up.config.timeout_s)
        except UpstreamError as exc:
            await self.admission.finish(req, "upstream_error", time.perf_counter() - t0, str(exc), error_kind=exc.kind)
            raise GatewayError(UPSTREAM_FAILED, f"{exc} (decision id {req.decision_id})") from None
        except RemoteError as exc:
            await self.admission.finish(req, "upstream_error", time.perf_counter() - t0, exc.message)
            raise GatewayError(exc.code, exc.message, exc.data) from None
        except anyio.get_cancelled_exc_class():
            await self.recorder.outcome(req, "cancelled", time.perf_counter() - t0)
            raise
        result, found = self._scan_result(req, up.name, str(params.get("name") or params.get("uri") or ""), result)
        await self.admission.finish(req, "ok", time.perf_counter() - t0, **found)
        if found.get("secrets_action") == "withheld":
            raise GatewayError(DENIED, withheld_text(found["secrets"], req.decision_id))
        return result

    # --- relayed requests: logging level, subscriptions, completion ----------------------------------------

    def session_of(self, req: Request) -> AgentSession | None:
        return self.relay.sessions.get(req.session_id) if req.session_id else None

    @guarded
    async def set_log_level(self, req: Request, level: str) -> dict[str, Any]:
        """Policy-checked; the level filters what the relay passes on and goes to this session's own upstreams."""
        exists = req.view is None or self.catalog.get(req.view) is not None
        decision = await self.admission.admit(
            req,
            Target(None, req.view, exists=exists),
            GatewayError(UNKNOWN_TOOL, f"Unknown server: {req.view}"),
            arguments={"level": level},
        )
        await self._refuse_denied(req, decision)
        session = self.session_of(req)
        if session is not None:
            await self.relay.set_level(session, level, self.catalog.in_view(req.view))
        await self.admission.finish(req, "ok", 0.0)
        return {}

    async def _subscription(self, req: Request, subscribe: bool) -> dict[str, Any]:
        uri = req.uri or ""
        up = await self._admit_resource(req)
        if not (up.conn.capabilities.get("resources") or {}).get("subscribe"):
            await self.admission.finish(req, "unsupported", 0.0)
            raise GatewayError(METHOD_NOT_FOUND, f"{req.action} is not supported by this server")
        session = self.session_of(req)
        if session is None:
            await self.admission.finish(req, "unsupported", 0.0)
            raise GatewayError(INVALID_REQUEST, f"{req.action} needs an MCP session (the 2025 protocol era)")
        t0 = time.perf_counter()

        async def send(method: str, params: dict[str, Any]) -> dict[str, Any]:
            return await self._forward_raw(req, up, method, params)

        try:
            if subscribe:
                result = await self.relay.subscribe(session, up, uri, send)
            else:
                result = await self.relay.unsubscribe(session, up, uri, send)
        except GatewayError as exc:
            await self.admission.finish(req, "upstream_error", time.perf_counter() - t0, exc.message)
            raise
        await self.admission.finish(req, "ok", time.perf_counter() - t0)
        return result

    @guarded
    async def subscribe(self, req: Request) -> dict[str, Any]:
        return await self._subscription(req, True)

    @guarded
    async def unsubscribe(self, req: Request) -> dict[str, Any]:
        return await self._subscription(req, False)

    @guarded
    async def complete(self, req: Request, params: dict[str, Any]) -> dict[str, Any]:
        """completion/complete for a prompt argument or a resource template, routed like the prompt or resource;
        a hidden prompt or template answers as a missing one."""
        raw_ref, raw_arg = params.get("ref"), params.get("argument")
        ref: dict[str, Any] = raw_ref if isinstance(raw_ref, dict) else {}
        argument: dict[str, Any] = raw_arg if isinstance(raw_arg, dict) else {}
        if ref.get("type") == "ref/prompt":
            name = str(ref.get("name", ""))
            await self.admission.check_name(req, "prompt", name)
            up, prompt_name, target = self._prompt(name, req.view)
            missing = GatewayError(INVALID_PARAMS, f"Unknown prompt: {name}")
            decision = await self.admission.admit(req, target, missing, prompt=prompt_name, arguments=argument)
            ref = {**ref, "name": prompt_name}
        elif ref.get("type") == "ref/resource":
            req.uri = str(ref.get("uri", ""))
            up, target = self._template_ref(req.uri, req.view)
            missing = GatewayError(INVALID_PARAMS, f"Unknown resource: {req.uri}")
            decision = await self.admission.admit(req, target, missing, arguments=argument)
        else:
            raise GatewayError(INVALID_PARAMS, "completion/complete needs a ref of type ref/prompt or ref/resource")
        assert up is not None
        await self._refuse_denied(req, decision)
        if "completions" not in up.conn.capabilities:
            await self.admission.finish(req, "ok", 0.0)
            return {"completion": {"values": [], "hasMore": False}}
        return await self._forward_simple(req, up, "completion/complete", {**params, "ref": ref})

    def _template_ref(self, uri: str, view: str | None) -> tuple[Upstream | None, Target]:
        """A completion's ref/resource names a template (its ``uriTemplate``) or a listed resource."""
        for up in self.catalog.in_view(view):
            for t in up.templates:
                if t.get("uriTemplate") == uri:
                    return up, Target("resource", up.name, uri, True, t.get("annotations") or {})
        return self._resource(uri, view)

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
