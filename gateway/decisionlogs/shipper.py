"""The shipper's lifecycle: read new audit records, POST them to the sink, then move the cursor.

It runs beside the calls and never holds one up: the call path writes its record to the local log (durable
before the call is forwarded, as always) and goes on; the shipper reads the file behind it. A batch is
``batch_size`` events (or ``max_batch_bytes``) as a gzip-compressed JSON array, POSTed with ``Content-Encoding:
gzip`` as OPA's decision-log plugin does. Only a 2xx answer moves the cursor: anything else (refused connection,
timeout, 4xx, 5xx) is retried with exponential backoff and jitter, the same batch from the same place, so nothing
is lost and a sink that was down gets everything once it is back. A restart resumes from the cursor file.
"""

from __future__ import annotations

import gzip
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import httpx2
import orjson

from gateway.decisionlogs.config import DecisionLogsConfig
from gateway.decisionlogs.cursor import LogReader, Position
from gateway.decisionlogs.events import to_event

log = logging.getLogger("gateway.decisionlogs")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Shipper:
    def __init__(self, cfg: DecisionLogsConfig, audit_path: Path, base_dir: Path, replica_id: str, metrics: Any):
        self.cfg = cfg
        self.replica_id = replica_id
        self.metrics = metrics
        cursor = Path(cfg.cursor_path) if cfg.cursor_path else audit_path.with_name(audit_path.name + ".cursor")
        self.reader = LogReader(audit_path, cursor if cursor.is_absolute() else base_dir / cursor)
        self._token_file = (base_dir / cfg.token_file) if cfg.token_file else None
        self._client: httpx2.AsyncClient | None = None
        self._lock = anyio.Lock()
        self.last_error: str | None = None

    def report(self) -> dict[str, Any]:
        """What /readyz shows: the sink, the cursor's place, the last upload error (never the token)."""
        pos = self.reader.pos
        return {"url": self.cfg.url, "cursor": {"offset": pos.offset, "last": pos.last}, "last_error": self.last_error}

    def _bearer(self) -> str | None:
        if self._token_file is not None:
            return self._token_file.read_text().strip() or None
        if self.cfg.token is not None:
            return _ENV_REF.sub(lambda m: os.environ.get(m.group(1), ""), self.cfg.token).strip() or None
        return None

    def _batch(self) -> tuple[bytes, int, Position]:
        """(gzip'd JSON array, events in it, the position after them), read in a worker thread."""
        lines, pos = self.reader.read(self.cfg.batch_size, self.cfg.max_batch_bytes)
        events = []
        for line in lines:
            if line.record is None:
                log.error("decision logs: a line of the audit log is not a record (torn by a crash?): skipped")
                continue
            events.append(to_event(line.record, line.hash, self.replica_id))
        if not events:
            return b"", 0, pos
        return gzip.compress(orjson.dumps(events), compresslevel=5), len(events), pos

    async def _post(self, body: bytes) -> None:
        assert self._client is not None
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        token = self._bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        resp = await self._client.post(self.cfg.url, content=body, headers=headers)
        if not 200 <= resp.status_code < 300:
            raise httpx2.HTTPError(f"the sink answered HTTP {resp.status_code}")

    async def ship_once(self) -> int:
        """Ship one batch; returns how many events went (0: nothing new). Raises on a failed upload."""
        async with self._lock:
            body, count, pos = await anyio.to_thread.run_sync(self._batch)
            if count:
                await self._post(body)
            if pos != self.reader.pos:
                await anyio.to_thread.run_sync(self.reader.save, pos)
            if count:
                self.metrics.decision_logs_shipped.inc(count)
            return count

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Ship for the gateway's lifetime; a failure waits (backoff) and retries the same batch."""
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(self.cfg.timeout_s), follow_redirects=False) as client:
            self._client = client
            task_status.started()
            backoff = 0.0
            while True:
                try:
                    sent = await self.ship_once()
                except Exception as exc:  # refused, timed out, an error answer, a bug: retry later, never crash
                    why = f"{type(exc).__name__}: {exc}"[:300]
                    if why != self.last_error:
                        log.warning("decision logs: upload to %s failed, will retry: %s", self.cfg.url, why)
                    self.last_error = why
                    self.metrics.decision_logs_errors.inc()
                    backoff = min(self.cfg.max_backoff_s, max(0.5, backoff * 2))
                    await anyio.sleep(backoff * random.uniform(0.5, 1.0))
                    continue
                if self.last_error is not None:
                    log.info("decision logs: uploads to %s work again", self.cfg.url)
                self.last_error, backoff = None, 0.0
                if sent < self.cfg.batch_size:
                    await anyio.sleep(self.cfg.interval_s)

    async def drain(self) -> None:
        """At shutdown: ship what is left, for at most ``drain_timeout_s`` (the rest goes after the next start)."""
        if self._client is None or self.cfg.drain_timeout_s == 0:
            return
        with anyio.move_on_after(self.cfg.drain_timeout_s):
            try:
                while await self.ship_once():
                    pass
            except Exception as exc:
                log.warning("decision logs: final upload failed (shipped after the next start): %s", exc)
