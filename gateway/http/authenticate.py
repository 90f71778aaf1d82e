"""Authentication: every ``/mcp`` request gets an ``Agent`` (API key, JWT or the anonymous identity) or a 401.

The backend is the gateway's ``Authenticator``; a failure is counted, audited and answered in one place
(``on_error``) with a ``WWW-Authenticate`` challenge that names the OAuth protected-resource metadata when JWTs
are accepted (RFC 9728), so MCP clients find the identity provider.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import stages
from gateway.errors import DENIED
from gateway.http.headers import headers_of
from gateway.http.respond import jsonrpc_error
from gateway.identity import Agent, Authenticator, AuthError
from gateway.metrics import Metrics
from gateway.record import Recorder

AGENT_KEY = "gateway.agent"
WELL_KNOWN = "/.well-known/oauth-protected-resource"


def agent_of(scope: Scope) -> Agent:
    agent: Agent = scope["state"][AGENT_KEY]
    return agent


class Authenticate:
    def __init__(
        self, app: ASGIApp, backend: Authenticator, metrics: Metrics, recorder: Recorder, resource_metadata_url: str
    ):
        self.app = app
        self.backend = backend
        self.metrics = metrics
        self.recorder = recorder
        self.resource_metadata_url = resource_metadata_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stages.begin()
        try:
            agent = self.backend.authenticate(headers_of(scope).authorization)
        except AuthError as exc:
            await self.on_error(scope, send, exc)
            return
        stages.mark("authenticate")
        scope["state"][AGENT_KEY] = agent
        await self.app(scope, receive, send)

    async def on_error(self, scope: Scope, send: Send, exc: AuthError) -> None:
        self.metrics.auth_failures.labels(exc.reason).inc()
        client = scope.get("client")
        await self.recorder.auth_failure(exc.reason, client[0] if client else None, scope["path"])
        if exc.reason == "missing":
            challenge = 'Bearer realm="mcp-gateway"'
        else:
            desc = exc.detail.replace('"', "'")
            challenge = f'Bearer realm="mcp-gateway", error="invalid_token", error_description="{desc}"'
        if self.backend.jwt_issuer is not None:  # read per request: an identity reload may add or drop JWTs
            challenge += f', resource_metadata="{self.resource_metadata_url}"'
        await jsonrpc_error(send, 401, DENIED, exc.detail, [(b"www-authenticate", challenge.encode())])
