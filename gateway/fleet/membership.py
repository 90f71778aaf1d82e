"""Who is in the fleet: replicas register in Redis with a heartbeat and a TTL; agents go to live replicas by
rendezvous hashing.

One Lua script per heartbeat (one round trip, every ``heartbeat_s``, never per request) renews this replica's
entry in a sorted set scored by expiry (Redis's own clock, so replicas' clocks need not agree), drops expired
entries and returns the live members with their addresses. Between heartbeats, ``owner`` is a pure function of
the last view: highest-random-weight (rendezvous) hashing of the agent id over live members, so every replica
that holds the same view picks the same owner, and a replica leaving moves only its own agents.

A replica that cannot reach Redis for a whole TTL knows nothing of the others: it serves what lands on it
(``owner`` answers itself) until Redis is back. A hop that cannot connect marks that member suspect for one TTL
locally, so a dead owner is routed around before its entry expires.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.fleet.config import FleetConfig

log = logging.getLogger("gateway.fleet")

_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(dead))
end
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for i, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
end
return out
"""


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    url: str


def _weight(agent: str, member: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{agent}\0{member}".encode(), digest_size=8).digest(), "big")


def rendezvous(agent: str, members: list[Member]) -> Member | None:
    """The member with the highest weight for this agent (None for an empty list)."""
    best: Member | None = None
    best_w = -1
    for m in members:
        w = _weight(agent, m.id)
        if w > best_w or (w == best_w and best is not None and m.id < best.id):
            best, best_w = m, w
    return best


class Membership:
    def __init__(self, config: FleetConfig, redis_client: aioredis.Redis):
        self.config = config
        self.me = Member(config.replica_id, config.advertise)
        self.redis = redis_client
        self._script = redis_client.register_script(_HEARTBEAT)
        self._keys = [f"{config.key_prefix}:members", f"{config.key_prefix}:addresses"]
        self.members: list[Member] = [self.me]
        self._suspect: dict[str, float] = {}
        self._last_ok = 0.0
        self.redis_ok = False

    # --- the view ------------------------------------------------------------------------------------------

    def live(self) -> list[Member]:
        """Live members as last seen, less those a failed hop marked suspect; just this replica when Redis has
        not answered for a TTL."""
        now = time.monotonic()
        if now - self._last_ok > self.config.ttl_s:
            return [self.me]
        if self._suspect:
            for mid in [m for m, until in self._suspect.items() if until <= now]:
                del self._suspect[mid]
            return [m for m in self.members if m.id not in self._suspect] or [self.me]
        return self.members

    def owner(self, agent_id: str) -> Member:
        return rendezvous(agent_id, self.live()) or self.me

    def suspect(self, member_id: str, why: str = "") -> None:
        """A hop to this member failed to connect: leave it out for one TTL (its entry expires by then if dead)."""
        if member_id != self.me.id:
            self._suspect[member_id] = time.monotonic() + self.config.ttl_s
            log.warning("fleet: replica %s did not answer (%s); routing around it", member_id, why)

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def beat(self, leave: bool = False) -> bool:
        """One heartbeat (or, ``leave``, a deregistration): renew, expire others, refresh the view."""
        try:
            if leave:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.zrem(self._keys[0], self.me.id)
                    pipe.hdel(self._keys[1], self.me.id)
                    await pipe.execute()
                return True
            ttl_ms = int(self.config.ttl_s * 1000)
            flat = await self._script(keys=self._keys, args=[self.me.id, ttl_ms, self.me.url])
        except (RedisError, OSError) as exc:
            if self.redis_ok:
                log.warning("fleet: heartbeat to Redis failed: %s", type(exc).__name__)
            self.redis_ok = False
            return False
        members = []
        for i in range(0, len(flat), 2):
            mid = flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i])
            url = flat[i + 1].decode() if isinstance(flat[i + 1], bytes) else str(flat[i + 1])
            if url:
                members.append(Member(mid, url))
        if not any(m.id == self.me.id for m in members):
            members.append(self.me)
        if {m.id for m in members} != {m.id for m in self.members}:
            log.info("fleet: live replicas %s", ", ".join(sorted(m.id for m in members)))
        self.members = members
        self._last_ok = time.monotonic()
        self.redis_ok = True
        return True

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self.beat()
        task_status.started()
        try:
            while True:
                await anyio.sleep(self.config.heartbeat_s)
                await self.beat()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self.beat(leave=True)
