"""Structured logs: JSON (or text) lines that carry the decision id of the call they are about.

The decision id is held in a context variable bound when a request's decision is recorded. The SDK runs each
request's handler in its own copy of the sender's context, so the binding covers every later line of that
request (outcome, upstream failures, audit failures) and no other request's. The same id is in the audit
record and on the trace span, so logs, audit and traces join on it.

Log lines carry what agents and upstreams chose (tool names, URIs, agent ids, error text). In the text format
every field is escaped (``escape``) so that one record is one line and nothing in it drives a terminal: a tool
name holding a newline and a made-up timestamp cannot forge a record, an ANSI sequence cannot recolour or erase
one. Exception text keeps its line breaks as indented continuation lines (a real record starts at column 0).
The JSON format is valid JSON whatever the values (lone surrogates, integers beyond 64 bits), with the same
characters written as ``\\u`` escapes.
"""

from __future__ import annotations

import logging
import re
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


# C0 controls, DEL, C1 controls, line/paragraph separators, bidi controls, lone surrogates (ANSI escapes start
# with ESC or the C1 CSI, so they are covered).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every character that could break a line or drive a terminal written as an escape."""
    return _UNSAFE.sub(_escape_char, text) if _UNSAFE.search(text) else text


def _escape_block(text: str) -> str:
    """Multi-line text (a traceback): each line escaped, continuation lines indented."""
    return "\n    ".join(escape(line) for line in text.split("\n"))


def _json_safe(value: Any) -> Any:
    """A copy orjson can write: strings with lone surrogates escaped, integers beyond 64 bits as text."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, dict):
        return {_json_safe(str(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return _json_safe(str(value))


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
        try:
            line = orjson.dumps(doc, default=str).decode()
        except TypeError:  # orjson.JSONEncodeError: a lone surrogate, an integer beyond 64 bits, deep nesting
            line = orjson.dumps(_json_safe(doc)).decode()
        # orjson escapes C0 only; DEL, C1, separators and bidi controls are valid in JSON strings but split lines
        # (str.splitlines, JavaScript) or drive terminals: write them as \u escapes (they occur only in strings).
        return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", line) if _JSON_UNSAFE.search(line) else line


class TextFormatter(logging.Formatter):
    """The classic line for people at a terminal, ending in ``decision_id=...`` when it is about a call."""

    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # The date and time are formatted once a second, not once a line (a call's line is on every call's path).
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record)} {record.levelname} {escape(record.name)}: {escape(record.getMessage())}"
        decision_id = getattr(record, "decision_id", None)
        if decision_id is not None:
            line += f" decision_id={escape(str(decision_id))}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n    " + _escape_block(record.exc_text)
        if record.stack_info:
            line += "\n    " + _escape_block(self.formatStack(record.stack_info))
        return line


def setup(cfg: LoggingConfig, level: str | None = None, stream: IO[str] | None = None) -> logging.Handler:
    """Route every logger (the gateway's, uvicorn's, the SDK's) through one handler in the configured format."""
    # No line the gateway writes names the caller's file, thread or process: records need not look them up (the
    # logging HOWTO's optimisations; a call's log line is on every call's path).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
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
