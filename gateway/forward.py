"""The forward stage: send a decided request to its upstream and turn every failure into a clear error."""

from __future__ import annotations

from typing import Any

from connectors.jsonrpc import ProgressFn, RemoteError, UpstreamError
from gateway import stages
from gateway.catalog import Upstream, strip_server_meta
from gateway.decide import Request
from gateway.errors import GatewayError
from gateway.metrics import Metrics

__all__ = ["GatewayError", "forward"]  # GatewayError lives in gateway.errors; re-exported for older imports


async def forward(
    metrics: Metrics,
    up: Upstream,
    req: Request,
    method: str,
    params: dict[str, Any],
    timeout: float,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Raises RemoteError (the upstream's own JSON-RPC error) or UpstreamError (it could not answer)."""
    stages.tag(up.name)
    try:
        result = await up.connector_for(req.agent, req.session_id).request(method, params, timeout, on_progress)
    except UpstreamError as exc:
        metrics.upstream_errors.labels(up.name, exc.kind).inc()
        raise
    except RemoteError:
        metrics.upstream_errors.labels(up.name, "remote_error").inc()
        raise
    return strip_server_meta(result)
