"""Structured logs: JSON (or text) lines that carry the decision id of the call they are about.

The decision id is held in a context variable bound when a request's decision is recorded. The SDK runs each
request's handler in its own copy of the sender's context, so the binding covers every later line of that
request (outcome, upstream failures, audit failures) and no other request's. The same id is in the audit
record and on the trace span, so logs, audit and traces join on it.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import IO, Any

import orjson

from gateway.config import LoggingConfig

_decision_id: ContextVar[str | None] = ContextVar("gateway_decision_id", default=None)

CALL_LOGGER = "gateway.call"
"""One line per finished request; ``[logging] calls = false`` silences it (its level rises to warning)."""

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is emitted as a field.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", "decision_id", "taskName"}
)


def bind(decision_id: str) -> None:
    """Tag every later log line of the current request with ``decision_id``."""
    _decision_id.set(decision_id)


def current_decision_id() -> str | None:
    return _decision_id.get()


class DecisionFilter(logging.Filter):
    """Puts the bound decision id on each record (an explicit ``extra={"decision_id": ...}`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "decision_id", None) is None:
            record.decision_id = _decision_id.get()
        return True


def _ts(created: float) -> str:
    secs = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{int((created - secs) * 1e6):06d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, decision_id (when about a call), extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _ts(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        decision_id = getattr(record, "decision_id", None)
        if decision_id is not None:
            doc["decision_id"] = decision_id
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    """The classic line for people at a terminal, ending in ``decision_id=...`` when it is about a call."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        decision_id = getattr(record, "decision_id", None)
        return line if decision_id is None else f"{line} decision_id={decision_id}"


def setup(cfg: LoggingConfig, level: str | None = None, stream: IO[str] | None = None) -> logging.Handler:
    """Route every logger (the gateway's, uvicorn's, the SDK's) through one handler in the configured format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if cfg.format == "json" else TextFormatter())
    handler.addFilter(DecisionFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel((level or cfg.level).upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    if not cfg.calls:
        logging.getLogger(CALL_LOGGER).setLevel(logging.WARNING)
    return handler
