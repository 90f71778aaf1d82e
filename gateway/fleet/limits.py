"""Per-agent limits (``[[limits]]``): calls per second with burst, per minute, per day, concurrent calls.

Each limit counts per agent the requests it matches (agent and team globs; tool globs over ``<upstream>__<tool>``
make it count tool calls only). Every request kind is checked in the one admission stage, before the policy
decides, so the policy sees ``input.usage`` and a refused request has its decision and outcome records.

With ``[fleet]`` the counters live in Redis and one Lua script checks and takes every bound a request matches in
one round trip, atomically (all or nothing: a refused request consumes nothing). The script reads Redis's own
clock, so replicas' clocks need not agree. A concurrent-call slot is released after the call, off the call path
(batched by a background task); a slot a dead replica held lapses after its lease. Without ``[fleet]`` the same
limits are counted in process. When Redis cannot be reached, ``[fleet] on_redis_error`` says what happens:
``deny`` refuses the request (fail closed) and ``local`` counts on this replica alone; never unlimited.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from redis.exceptions import RedisError

from gateway.fleet.config import LimitConfig

log = logging.getLogger("gateway.fleet")

CONCURRENT_LEASE_S = 300
"""A concurrent-call slot not released within this long (its replica died) lapses."""

_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = tonumber(ARGV[1])
local token = ARGV[2]
local state = {}
for i = 1, n do
  local b = 3 + (i - 1) * 3
  local kind, x, y = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local key = KEYS[i]
  local retry = -1
  if kind == 'rate' then
    local h = redis.call('HMGET', key, 'tok', 'ts')
    local tok, ts = tonumber(h[1]) or y, tonumber(h[2]) or now
    tok = math.min(y, tok + math.max(0, now - ts) * x)
    state[i] = tok
    if tok < 1 then retry = (1 - tok) / x end
  elseif kind == 'window' then
    local c = tonumber(redis.call('GET', key .. ':' .. math.floor(now / y))) or 0
    state[i] = c
    if c >= x then retry = (math.floor(now / y) + 1) * y - now end
  else
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local c = redis.call('ZCARD', key)
    state[i] = c
    if c >= x then retry = 1 end
  end
  if retry >= 0 then
    return {0, i, math.ceil(retry * 1000)}
  end
end
local out = {1, 0, 0}
for i = 1, n do
  local b = 3 + (i - 1) * 3
  local kind, x, y = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local key = KEYS[i]
  if kind == 'rate' then
    redis.call('HSET', key, 'tok', tostring(state[i] - 1), 'ts', tostring(now))
    redis.call('PEXPIRE', key, math.ceil(y / x * 1000) + 1000)
    out[#out + 1] = math.floor(y - (state[i] - 1))
  elseif kind == 'window' then
    local wkey = key .. ':' .. math.floor(now / y)
    local c = redis.call('INCR', wkey)
    if c == 1 then redis.call('EXPIRE', wkey, math.ceil(y) + 1) end
    out[#out + 1] = c
  else
    redis.call('ZADD', key, now + y, token)
    redis.call('EXPIRE', key, math.ceil(y) + 1)
    out[#out + 1] = state[i] + 1
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class Bound:
    limit: str
    kind: str
    """"rate", "window" or "concurrent"."""
    label: str
    """The config key: calls_per_second, calls_per_minute, calls_per_day, concurrent_calls."""
    x: float
    """rate: calls per second; window: calls per window; concurrent: slots."""
    y: float
    """rate: burst; window: its length in seconds; concurrent: the lease in seconds."""

    @property
    def limit_value(self) -> int:
        return int(self.y) if self.kind == "rate" else int(self.x)

    @property
    def window_s(self) -> int:
        if self.kind == "rate":
            return max(1, math.ceil(self.y / self.x))
        return int(self.y) if self.kind == "window" else 0


def bounds_of(lim: LimitConfig) -> list[Bound]:
    out = []
    if lim.calls_per_second is not None:
        burst = lim.burst if lim.burst is not None else max(1, math.ceil(lim.calls_per_second))
        out.append(Bound(lim.name, "rate", "calls_per_second", lim.calls_per_second, burst))
    if lim.calls_per_minute is not None:
        out.append(Bound(lim.name, "window", "calls_per_minute", lim.calls_per_minute, 60))
    if lim.calls_per_day is not None:
        out.append(Bound(lim.name, "window", "calls_per_day", lim.calls_per_day, 86400))
    if lim.concurrent_calls is not None:
        out.append(Bound(lim.name, "concurrent", "concurrent_calls", lim.concurrent_calls, CONCURRENT_LEASE_S))
    return out


@dataclass(slots=True)
class Verdict:
    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    """``input.usage``: per limit name its most used bound (used, limit, window_s), counting this request."""
    refused: Bound | None = None
    retry_after_s: float = 0.0
    unavailable: bool = False
    """Redis could not be reached and ``on_redis_error = "deny"``."""


def _matches(globs: list[str], value: str | None) -> bool:
    return value is not None and any(fnmatch.fnmatchcase(value, g) for g in globs)


def _usage(bounds: list[Bound], used: list[int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    ratio: dict[str, float] = {}
    for b, u in zip(bounds, used, strict=True):
        r = u / max(1, b.limit_value)
        if b.limit not in out or r > ratio[b.limit]:
            out[b.limit] = {"used": int(u), "limit": b.limit_value, "window_s": b.window_s}
            ratio[b.limit] = r
    return out


class LocalCounters:
    """The same bounds in process: one replica without ``[fleet]``, or ``on_redis_error = "local"``."""

    def __init__(self) -> None:
        self.buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self.windows: dict[tuple[str, str, str], tuple[int, int]] = {}
        self.slots: dict[tuple[str, str], int] = {}

    def take(self, agent: str, bounds: list[Bound]) -> tuple[list[int], Bound | None, float]:
        now = time.time()
        state: list[float] = []
        for b in bounds:
            if b.kind == "rate":
                tok, ts = self.buckets.get((b.limit, agent), (b.y, now))
                tok = min(b.y, tok + max(0.0, now - ts) * b.x)
                state.append(tok)
                if tok < 1:
                    return [], b, (1 - tok) / b.x
            elif b.kind == "window":
                idx = int(now // b.y)
                w_idx, count = self.windows.get((b.limit, agent, b.label), (idx, 0))
                count = count if w_idx == idx else 0
                state.append(count)
                if count >= b.x:
                    return [], b, (idx + 1) * b.y - now
            else:
                count = self.slots.get((b.limit, agent), 0)
                state.append(count)
                if count >= b.x:
                    return [], b, 1.0
        used = []
        for b, s in zip(bounds, state, strict=True):
            if b.kind == "rate":
                self.buckets[(b.limit, agent)] = (s - 1, now)
                used.append(int(b.y - (s - 1)))
            elif b.kind == "window":
                self.windows[(b.limit, agent, b.label)] = (int(now // b.y), int(s) + 1)
                used.append(int(s) + 1)
            else:
                self.slots[(b.limit, agent)] = int(s) + 1
                used.append(int(s) + 1)
        return used, None, 0.0

    def release(self, agent: str, bounds: list[Bound]) -> None:
        for b in bounds:
            key = (b.limit, agent)
            left = self.slots.get(key, 0) - 1
            if left > 0:
                self.slots[key] = left
            else:
                self.slots.pop(key, None)


class Limiter:
    def __init__(
        self,
        limits: list[LimitConfig],
        redis: Any = None,
        prefix: str = "mcpgw",
        on_redis_error: str = "deny",
        on_redis_failure: Callable[[str], None] = lambda mode: None,
    ):
        self.limits = [(lim, bounds_of(lim)) for lim in limits if bounds_of(lim)]
        self.redis = redis
        self.prefix = prefix
        self.on_redis_error = on_redis_error
        self.on_redis_failure = on_redis_failure
        self.local = LocalCounters()
        self._script = redis.register_script(_SCRIPT) if redis is not None else None
        self._held: dict[str, tuple[str, str, list[Bound]]] = {}
        """decision id -> (where: "redis" | "local", agent, concurrent bounds) of a call holding slots."""
        self._releases: list[tuple[str, list[str]]] = []
        self._release_ready = anyio.Event()

    def matching(self, agent_id: str, team: str, tool: str | None) -> list[Bound]:
        out: list[Bound] = []
        for lim, bounds in self.limits:
            if not _matches(lim.agents, agent_id) or not _matches(lim.teams, team):
                continue
            if lim.tools is not None and not _matches(lim.tools, tool):
                continue
            out.extend(bounds)
        return out

    def _key(self, b: Bound, agent: str) -> str:
        return f"{self.prefix}:limit:{b.limit}:{b.label}:{agent}"

    async def take(self, decision_id: str, agent_id: str, team: str, tool: str | None) -> Verdict | None:
        """Check and take every bound this request matches; None when no limit matches."""
        bounds = self.matching(agent_id, team, tool)
        if not bounds:
            return None
        where = "local"
        if self._script is not None:
            try:
                args: list[Any] = [len(bounds), decision_id]
                for b in bounds:
                    args += [b.kind, repr(float(b.x)), repr(float(b.y))]
                res = await self._script(keys=[self._key(b, agent_id) for b in bounds], args=args)
                where = "redis"
                if int(res[0]) == 0:
                    return Verdict(refused=bounds[int(res[1]) - 1], retry_after_s=int(res[2]) / 1000)
                used = [int(u) for u in res[3:]]
            except (RedisError, OSError) as exc:
                self.on_redis_failure(self.on_redis_error)
                log.warning(
                    "limits: Redis unreachable (%s): on_redis_error = %s", type(exc).__name__, self.on_redis_error
                )
                if self.on_redis_error == "deny":
                    return Verdict(unavailable=True, retry_after_s=1.0)
                where = "local"
        if where == "local":
            used, refused, retry = self.local.take(agent_id, bounds)
            if refused is not None:
                return Verdict(refused=refused, retry_after_s=retry)
        held = [b for b in bounds if b.kind == "concurrent"]
        if held:
            self._held[decision_id] = (where, agent_id, held)
        return Verdict(usage=_usage(bounds, used))

    def release(self, decision_id: str) -> None:
        """The call has ended: give back its concurrent slots (in Redis by the background task, batched)."""
        held = self._held.pop(decision_id, None)
        if held is None:
            return
        where, agent, bounds = held
        if where == "local":
            self.local.release(agent, bounds)
        else:
            self._releases.append((decision_id, [self._key(b, agent) for b in bounds]))
            self._release_ready.set()

    async def run_releases(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._release_ready.wait()
            self._release_ready = anyio.Event()
            batch, self._releases = self._releases, []
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for token, keys in batch:
                        for key in keys:
                            pipe.zrem(key, token)
                    await pipe.execute()
            except (RedisError, OSError):
                pass  # the slots lapse after their lease
