"""OpenTelemetry tracing: one span per MCP request, with auth, policy decision and forward as its children.

Only when ``[tracing] exporter`` is set: otherwise no provider is installed and every helper here returns a
shared no-op context, so the hot path pays one global read. The call span starts in the HTTP layer (it must
cover authentication), continues a W3C ``traceparent`` sent in the HTTP headers, and is handed to the request's
handler through the context variables the SDK carries from the HTTP task to the handler task. The recorder
names it after the request and tags it with the decision id, agent and decision, so a trace joins the audit
record and the log lines of the same call.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import TracingConfig
from gateway.http.headers import headers_of

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from gateway.decide import Request
    from gateway.identity import Agent, Authenticator
    from gateway.policy import Decision

log = logging.getLogger("gateway.tracing")

_tracer: Tracer | None = None
_provider: Any = None
_call_span: ContextVar[Span | None] = ContextVar("gateway_call_span", default=None)
_NULL = contextlib.nullcontext()


def enabled() -> bool:
    return _tracer is not None


def configure(cfg: TracingConfig, version: str = "0.1.0") -> bool:
    """Install the SDK's tracer provider with the configured exporter; False when tracing is off."""
    global _tracer, _provider
    if cfg.exporter == "none":
        return False
    if _tracer is not None:
        return True  # one provider per process: the first gateway's configuration wins
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise ValueError(
            f"tracing.exporter = {cfg.exporter!r} needs opentelemetry-sdk and "
            f"opentelemetry-exporter-otlp-proto-http ({exc.name} is missing)"
        ) from None
    resource = Resource.create({"service.name": cfg.service_name, "service.version": version})
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)))
    exporter = OTLPSpanExporter(endpoint=cfg.endpoint, headers=cfg.resolved_headers() or None, timeout=10)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("mcp-gateway", version)
    log.info("tracing: spans go to %s over OTLP/HTTP (sample ratio %s)", redact_url(cfg.endpoint), cfg.sample_ratio)
    return True


def redact_url(url: str) -> str:
    """The URL without credentials, for logs: ``https://user:secret@host/`` names only the host."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def shutdown() -> None:
    """Flush spans still queued; called when the gateway stops."""
    if _provider is not None:
        try:
            _provider.force_flush(5000)
        except Exception as exc:
            log.warning("tracing: flushing spans failed: %s", exc)


def span(name: str, attributes: dict[str, Any] | None = None) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one (policy decision, forward), or a no-op when tracing is off."""
    if _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(name, attributes=attributes)


def forward_span(server: str, method: str) -> contextlib.AbstractContextManager[Any]:
    if _tracer is None:
        return _NULL
    from opentelemetry.trace import SpanKind

    return _tracer.start_as_current_span(
        f"forward {server}", kind=SpanKind.CLIENT, attributes={"gateway.server": server, "mcp.method.name": method}
    )


def annotate_call(req: Request, decision: Decision, server: str | None, target: str | None) -> None:
    """Name the request's call span after what was decided, and tag it so it joins the audit record."""
    sp = _call_span.get()
    if sp is None:
        return
    what = req.name or req.uri
    sp.update_name(f"{req.action} {what}" if what else req.action)
    verdict = "allow" if decision.allow else ("error" if decision.error else "deny")
    attrs: dict[str, Any] = {
        "mcp.method.name": req.action,
        "gateway.decision_id": req.decision_id,
        "gateway.decision": verdict,
        "gateway.agent": req.agent.id,
        "gateway.team": req.agent.team,
        "gateway.policy.revision": decision.revision,
    }
    if server:
        attrs["gateway.server"] = server
    if target:
        attrs["gateway.target"] = target
    if req.session_id:
        attrs["mcp.session.id"] = req.session_id
    if req.action == "tools/call" and req.name:
        attrs["gen_ai.operation.name"] = "execute_tool"
        attrs["gen_ai.tool.name"] = req.name
    if not decision.allow and decision.reasons:
        attrs["gateway.deny_reasons"] = list(decision.reasons)
    sp.set_attributes(attrs)


def annotate_outcome(outcome: str, error: str | None) -> None:
    """Mark the call span failed when the upstream failed (the agent still gets an answer over HTTP 200)."""
    sp = _call_span.get()
    if sp is None:
        return
    sp.set_attribute("gateway.outcome", outcome)
    if outcome == "upstream_error":
        from opentelemetry.trace import StatusCode

        sp.set_status(StatusCode.ERROR, (error or outcome)[:200])


def trace_auth(auth: Authenticator) -> Authenticator:
    """Wrap ``auth.authenticate`` in an ``auth`` span (a child of the call span); a no-op when tracing is off."""
    if _tracer is None:
        return auth
    from opentelemetry.trace import StatusCode

    from gateway.identity import AuthError

    inner: Callable[[str | None], Agent] = auth.authenticate
    tracer = _tracer

    def authenticate(authorization: str | None) -> Agent:
        if _call_span.get() is None:
            return inner(authorization)  # GET streams and DELETEs carry no call: no orphan auth spans
        with tracer.start_as_current_span("auth", record_exception=False, set_status_on_exception=False) as sp:
            try:
                agent = inner(authorization)
            except AuthError as exc:
                sp.set_attribute("gateway.auth.failure", exc.reason)
                sp.set_status(StatusCode.ERROR, exc.reason)
                raise
            sp.set_attributes({"gateway.auth.method": agent.auth, "gateway.agent": agent.id})
            return agent

    auth.authenticate = authenticate  # type: ignore[method-assign]
    return auth


class TracingMiddleware:
    """Opens the call span for each MCP POST before authentication, so auth is a child of it."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = _tracer
        if (
            tracer is None
            or scope["type"] != "http"
            or scope["method"] != "POST"
            or not (scope["path"] == "/mcp" or scope["path"].startswith("/mcp/"))
        ):
            await self.app(scope, receive, send)
            return
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind, StatusCode

        headers = headers_of(scope)  # parsed once (a duplicated traceparent was refused with 400)
        carrier = {"traceparent": headers.traceparent or "", "tracestate": headers.tracestate or ""}
        with tracer.start_as_current_span(
            "mcp.request",
            context=extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "url.path": scope["path"]},
        ) as sp:
            token = _call_span.set(sp)

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    sp.set_attribute("http.response.status_code", status)
                    if status >= 400:
                        sp.set_status(StatusCode.ERROR, f"HTTP {status}")
                await send(message)

            try:
                await self.app(scope, receive, traced_send)
            finally:
                _call_span.reset(token)
