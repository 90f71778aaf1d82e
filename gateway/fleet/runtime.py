"""The fleet's parts, built from ``[fleet]`` and run with the gateway: the Redis client, membership (its
heartbeat task), the hop client and verifier. ``Gateway`` holds one ``Fleet`` when ``[fleet]`` is configured."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.abc
import httpx2
import redis.asyncio as aioredis

from gateway.config import Config
from gateway.fleet.admit import LimitStep
from gateway.fleet.config import FleetConfig
from gateway.fleet.hop import HopVerifier
from gateway.fleet.limits import Limiter, bounds_of
from gateway.fleet.membership import Membership
from gateway.metrics import Metrics


class Fleet:
    def __init__(self, config: FleetConfig, base_dir: Path, metrics: Metrics):
        self.config = config
        self.secret = config.secret_bytes(base_dir)
        # Bounded waits: a Redis that stops answering costs a request at most this long, never a hang.
        self.redis = aioredis.Redis.from_url(
            config.redis_url,
            socket_connect_timeout=1.0,
            socket_timeout=1.0,
        )
        self.membership = Membership(config, self.redis)
        self.limiter: Limiter | None = None
        """Set by ``build_limits`` when [[limits]] are counted in this fleet's Redis."""
        metrics.fleet_members.set_function(lambda: len(self.membership.live()))
        self.verifier = HopVerifier(self.secret)
        self.client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(config.hop_timeout_s, connect=config.hop_connect_timeout_s),
            follow_redirects=False,
            # Idle connections dropped well before the owner's server closes them (uvicorn: 5 s), so a hop never
            # goes out on a connection the owner is closing (a POST there could not be resent).
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=2.0),
        )

    @asynccontextmanager
    async def running(self, tg: anyio.abc.TaskGroup) -> AsyncIterator[None]:
        scope, release_scope = anyio.CancelScope(), anyio.CancelScope()

        async def heartbeat(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await self.membership.run(task_status=task_status)

        async def releases() -> None:
            with release_scope:
                if self.limiter is not None:
                    await self.limiter.run_releases()

        await tg.start(heartbeat)
        tg.start_soon(releases)
        try:
            yield
        finally:
            release_scope.cancel()
            scope.cancel()  # deregisters (shielded): this replica's agents move at once, not after a TTL
            await anyio.sleep(0)
            await self.client.aclose()
            await self.redis.aclose()


def build_limits(config: Config, fleet: Fleet | None, metrics: Metrics) -> LimitStep | None:
    """The ``[[limits]]`` step for the admission stage: counted in Redis with ``[fleet]``, else in process."""
    if not any(bounds_of(lim) for lim in config.limits):
        return None
    limiter = Limiter(
        config.limits,
        fleet.redis if fleet is not None else None,
        fleet.config.key_prefix if fleet is not None else "mcpgw",
        fleet.config.on_redis_error if fleet is not None else "deny",
        lambda mode: metrics.limit_redis_errors.labels(mode).inc(),
    )
    if fleet is not None:
        fleet.limiter = limiter
    return LimitStep(limiter, metrics)
