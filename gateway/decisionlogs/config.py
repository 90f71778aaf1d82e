"""``[decision_logs]``: where the audit records go, how they are batched, and the token, validated at load."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DecisionLogsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    """The sink's URL, POSTed to as is (an OPA-compatible service's ``<service url>/logs``)."""
    token: str | None = None
    """Bearer token; ``${VAR}`` references are read from the environment (never logged)."""
    token_file: str | None = None
    """A file holding the bearer token (a mounted secret), read again for every upload."""
    batch_size: Annotated[int, Field(gt=0, le=100_000)] = 500
    """Events per POST at most."""
    max_batch_bytes: Annotated[int, Field(ge=1024, le=64 << 20)] = 4 << 20
    """Uncompressed JSON per POST at most (a single larger record still goes, alone)."""
    interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    """How often the log is read for new records when the last read found less than a batch."""
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    max_backoff_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    """Failed uploads are retried with exponential backoff (with jitter) up to this long apart."""
    cursor_path: str | None = None
    """Where the position of the last shipped record is kept (default: the audit log's path + ``.cursor``)."""
    drain_timeout_s: Annotated[float, Field(ge=0, le=600)] = 5.0
    """At shutdown, ship what is left for at most this long (the rest goes after the next start)."""

    @model_validator(mode="after")
    def _check(self) -> DecisionLogsConfig:
        if not re.match(r"^https?://[^/@\s]+(/\S*)?$", self.url):
            raise ValueError("url must be http(s)://host[:port]/path, without credentials (use token)")
        if self.token is not None and self.token_file is not None:
            raise ValueError("set at most one of token and token_file")
        return self
