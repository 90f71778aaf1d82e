"""The fleet's parts, built from ``[fleet]`` and run with the gateway: the Redis client, membership (its
heartbeat task), the hop client and verifier. ``Gateway`` holds one ``Fleet`` when ``[fleet]`` is configured."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.abc
import httpx2
import redis.asyncio as aioredis

from gateway.fleet.config import FleetConfig
from gateway.fleet.hop import HopVerifier
from gateway.fleet.membership import Membership
from gateway.metrics import Metrics


class Fleet:
    def __init__(self, config: FleetConfig, base_dir: Path, metrics: Metrics):
        self.config = config
        self.secret = config.secret_bytes(base_dir)
        # Bounded waits: a Redis that stops answering costs a request at most this long, never a hang.
        self.redis = aioredis.Redis.from_url(
            config.redis_url,
            socket_connect_timeout=min(1.0, config.heartbeat_s),
            socket_timeout=min(1.0, config.heartbeat_s),
        )
        self.membership = Membership(config, self.redis)
        metrics.fleet_members.set_function(lambda: len(self.membership.live()))
        self.verifier = HopVerifier(self.secret)
        self.client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(config.hop_timeout_s, connect=config.hop_connect_timeout_s),
            follow_redirects=False,
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100),
        )

    @asynccontextmanager
    async def running(self, tg: anyio.abc.TaskGroup) -> AsyncIterator[None]:
        scope = anyio.CancelScope()

        async def heartbeat(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await self.membership.run(task_status=task_status)

        await tg.start(heartbeat)
        try:
            yield
        finally:
            scope.cancel()  # deregisters (shielded): this replica's agents move at once, not after a TTL
            await anyio.sleep(0)
            await self.client.aclose()
            await self.redis.aclose()
