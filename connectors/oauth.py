"""OAuth for HTTP upstreams that need a token: the MCP authorization flow, by the SDK's own client provider.

The provider does what the MCP authorization spec asks of a client when the upstream answers 401: protected
resource metadata (RFC 9728, from ``WWW-Authenticate`` or the well-known paths), authorization server metadata
(RFC 8414 / OpenID discovery), client registration (pre-registered credentials from the configuration, a client
ID metadata document, or dynamic registration), authorization code with PKCE and the resource indicator, the
token request (``client_secret_basic``, ``client_secret_post`` or none), scope step-up on 403, and refresh.

The gateway has no user at hand, so the authorization step is headless: it requests the authorization URL
without following its redirect and takes the code from the ``Location`` it is sent to. That works with an
authorization server that approves this client without a login page (a service account, a pre-consented
client, the conformance suite's test server); one that needs a person must issue a token for ``headers``.
Tokens are kept in memory, per connection.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx2
from mcp.client.auth import OAuthClientProvider
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from pydantic import AnyUrl

log = logging.getLogger("gateway.upstream")


class MemoryStorage:
    def __init__(self, client: OAuthClientInformationFull | None):
        self.tokens: OAuthToken | None = None
        self.client = client

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class HeadlessAuthorization:
    """The redirect and callback handlers of a client with no browser: follow the authorization URL once."""

    def __init__(self, name: str):
        self._name = name
        self._result: AuthorizationCodeResult | None = None

    async def redirect(self, authorization_url: str) -> None:
        async with httpx2.AsyncClient(timeout=30, follow_redirects=False) as http:
            resp = await http.get(authorization_url)
        location = resp.headers.get("location", "")
        query = parse_qs(urlparse(location).query)
        if resp.status_code not in (301, 302, 303, 307, 308) or "code" not in query:
            error = (query.get("error") or [f"HTTP {resp.status_code} without a code"])[0]
            raise RuntimeError(
                f"upstream {self._name!r}: the authorization server did not authorize the gateway "
                f"without a user ({error}); configure a token in headers instead"
            )
        self._result = AuthorizationCodeResult(
            code=query["code"][0],
            state=query["state"][0] if "state" in query else None,
            iss=query["iss"][0] if "iss" in query else None,
        )

    async def callback(self) -> AuthorizationCodeResult:
        result, self._result = self._result, None
        if result is None:
            raise RuntimeError(f"upstream {self._name!r}: no authorization code was received")
        return result


def oauth_provider(name: str, url: str, cfg: Any) -> httpx2.Auth:
    """``cfg`` is the upstream's ``oauth`` table (see gateway.config.UpstreamOAuth)."""
    secret = os.environ.get(cfg.client_secret_env, "") if cfg.client_secret_env else None
    if cfg.client_secret_env and not secret:  # said now: the flow would fail later with the server's words only
        log.warning(
            "upstream %s: oauth.client_secret_env names %s, which is not set; authorizing without a client secret",
            name,
            cfg.client_secret_env,
        )
    method = cfg.token_endpoint_auth_method or ("client_secret_basic" if secret else "none")
    metadata = OAuthClientMetadata(
        redirect_uris=[AnyUrl(cfg.redirect_uri)],
        client_name=cfg.client_name,
        scope=cfg.scope,
        grant_types=["authorization_code", "refresh_token"],
        token_endpoint_auth_method=method,  # type: ignore[arg-type]
    )
    client = None
    if cfg.client_id:
        client = OAuthClientInformationFull(
            client_id=cfg.client_id,
            client_secret=secret or None,
            redirect_uris=[AnyUrl(cfg.redirect_uri)],
            token_endpoint_auth_method=method,
            scope=cfg.scope,
        )
    flow = HeadlessAuthorization(name)
    return OAuthClientProvider(
        server_url=url,
        client_metadata=metadata,
        storage=MemoryStorage(client),
        redirect_handler=flow.redirect,
        callback_handler=flow.callback,
        client_metadata_url=cfg.client_metadata_url,
    )
