"""The gateway's side of the lock: screen every list an upstream sends, report and count drift, reload the lock.

``Catalog.refresh`` hands each fetched list to ``Integrity.screen``, which returns what the catalog keeps: with
``on_drift = "hide"`` only locked items, so an unlocked or changed item is simply not there (every request naming
it takes the missing-item path, and its answer is a missing item's to the byte); with ``"monitor"`` everything,
flagged. Either way each drift is written to the audit log with its diff once (not on every re-list), counted in
``mcp_gateway_tool_drift_total{server,kind}`` and listed in ``/readyz`` until it is resolved. Without a lock the
screen passes everything and only keeps each item's digest, for ``input.integrity``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from gateway.audit import now_iso
from gateway.integrity.definitions import CATALOG_KIND, KINDS
from gateway.integrity.drift import Drift, compare, fold
from gateway.integrity.lockfile import Lock, LockError, load
from gateway.signals import reload_on_change, reload_on_sighup

log = logging.getLogger("gateway.integrity")

_SECTION = {v: k for k, v in CATALOG_KIND.items()}
"""The catalog's list name -> the lock's section."""
_NAMED = {"tool": "tools", "prompt": "prompts"}
REPORT_ITEMS = 100
"""Drifted items listed per server in /readyz (an upstream may list thousands)."""


class Integrity:
    def __init__(
        self,
        lock_path: Path | None,
        on_drift: str = "hide",
        metrics: Any = None,
        audit: Callable[[dict[str, Any]], bool] | None = None,
        watch_interval_s: float = 2.0,
    ):
        """Raises LockError when a lock is configured but missing or corrupt: the gateway does not start."""
        self.path = lock_path
        self.on_drift = on_drift
        self._metrics = metrics
        self._audit = audit
        self._interval = watch_interval_s
        self.lock: Lock | None = load(lock_path) if lock_path is not None else None
        self._seen = self._fingerprint()
        self._items: dict[tuple[str, str], dict[str, tuple[str, bool]]] = {}
        """(server, section) -> item key -> (digest, locked), of what the upstream last listed."""
        self._drift: dict[tuple[str, str, str], Drift] = {}
        """(server, section, key) -> its drift now."""

    @property
    def hides(self) -> bool:
        return self.lock is not None and self.on_drift == "hide"

    # --- screening --------------------------------------------------------------------------------------------

    def screen(self, server: str, catalog_kind: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """What the catalog keeps of the list ``items`` (catalog kind: tools, prompts, templates)."""
        kind = _SECTION.get(catalog_kind)
        if kind is None:  # resources: not locked (their lists are data, and change as data does)
            return items
        locked = self.lock.entries(server, kind) if self.lock is not None else None
        result = compare(server, kind, items, locked, self._others(server, kind) if locked is not None else None)
        self._items[(server, kind)] = {k: (d, ok) for k, (_i, d, ok) in result.served.items()}
        if self.lock is not None:
            self._update_drift(server, kind, result.drifts)
        if not self.hides:
            return [item for item, _d, _ok in result.served.values()]
        return [item for item, _d, ok in result.served.values() if ok]

    def _others(self, server: str, kind: str) -> dict[str, str]:
        """Folded name -> ``server/name`` of the items a new one must not be named like: every locked item, and
        what the other servers list now."""
        out: dict[str, str] = {}
        if self.lock is not None:
            for s, sections in sorted(self.lock.servers.items()):
                for name in sections.get(kind, {}):
                    out.setdefault(fold(name), f"{s}/{name}")
        for (s, k), items in sorted(self._items.items()):
            if k == kind and s != server:
                for name in items:
                    out.setdefault(fold(name), f"{s}/{name}")
        return out

    def _update_drift(self, server: str, kind: str, drifts: list[Drift]) -> None:
        now = {(server, kind, d.name): d for d in drifts}
        for key, d in now.items():
            before = self._drift.get(key)
            if before is None or (before.drift, before.digest) != (d.drift, d.digest):
                self._report(d)
        for key in [k for k in self._drift if k[0] == server and k[1] == kind and k not in now]:
            self._resolved(self._drift.pop(key))
        self._drift.update(now)
        if self._metrics is not None:
            self._metrics.tool_drift_items.labels(server).set(sum(1 for k in self._drift if k[0] == server))

    def _report(self, d: Drift) -> None:
        action = "reported" if d.drift == "removed" else ("hidden" if self.hides else "flagged")
        log.warning("tool drift: %s (%s)", d.text().splitlines()[0], action)
        if self._metrics is not None:
            self._metrics.tool_drift.labels(d.server, d.drift).inc()
        self._write({"type": "integrity_drift", "timestamp": now_iso(), **d.record(), "action": action, "diff": d.diff})

    def _resolved(self, d: Drift) -> None:
        log.info("tool drift resolved: %s %s", d.server, d.name)
        self._write({"type": "integrity_drift", "timestamp": now_iso(), **d.record(), "drift": "resolved"})

    def _write(self, record: dict[str, Any]) -> None:
        if self._audit is not None and not self._audit(record):
            log.error("the drift record of %s %s could not be audited", record.get("server"), record.get("name"))

    # --- what the rest of the gateway asks --------------------------------------------------------------------

    def of(self, server: str | None, kind: str, name: str) -> dict[str, Any]:
        """``input.integrity`` of a named tool or prompt: ``locked`` (its definition is the locked one) and
        ``digest`` (of its definition as listed now; null for an item not listed)."""
        section = _NAMED.get(kind)
        state = self._items.get((server, section), {}).get(name) if server is not None and section else None
        if state is None:
            return {"locked": False, "digest": None}
        return {"locked": state[1], "digest": state[0]}

    def report(self) -> dict[str, Any]:
        """For ``/readyz``: the lock, the mode, and the items drifted now, per server (the first
        ``REPORT_ITEMS`` of each; ``drift_items`` counts them all)."""
        drift: dict[str, list[dict[str, Any]]] = {}
        counts: dict[str, int] = {}
        for (server, _kind, _name), d in sorted(
            self._drift.items(), key=lambda kv: (kv[0][0], KINDS.index(kv[0][1]), kv[0][2])
        ):
            counts[server] = counts.get(server, 0) + 1
            if counts[server] <= REPORT_ITEMS:
                rec = d.record()
                rec.pop("server")
                drift.setdefault(server, []).append(rec)
        return {"lock": str(self.path), "on_drift": self.on_drift, "drift": drift, "drift_items": counts}

    # --- reloads ----------------------------------------------------------------------------------------------

    def _fingerprint(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat() if self.path is not None else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size) if st is not None else None

    async def reload(self, why: str, relist: Callable[[], Awaitable[None]]) -> bool:
        """Read the lock again; a missing or corrupt one is refused (the lock in force stays). Then re-list every
        upstream: what the new lock approves is served again, and agents are told their lists changed."""
        self._seen = self._fingerprint()
        assert self.path is not None
        try:
            lock = await anyio.to_thread.run_sync(load, self.path)
        except LockError as exc:
            log.error("tool lock reload (%s) refused, the lock in force stays: %s", why, exc)
            return False
        self.lock = lock
        log.info("tool lock reloaded (%s): %s", why, self.path)
        await relist()
        return True

    async def run(
        self,
        relist: Callable[[], Awaitable[None]],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Reload on SIGHUP and when the lock file changes (polled, like the policy's files)."""
        if self.path is None:
            task_status.started()
            return

        async def reload(why: str) -> None:
            await self.reload(why, relist)

        async with anyio.create_task_group() as tg:
            await tg.start(reload_on_sighup, reload, log, "tool lock")
            task_status.started()
            await reload_on_change(self._fingerprint, lambda: self._seen, self._interval, reload)
