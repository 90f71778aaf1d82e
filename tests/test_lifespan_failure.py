"""A gateway whose task group fails after start-up stops (non-zero, for a supervisor to restart it) instead of
answering /healthz 200 while every /mcp call fails."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx2

from tests.conftest import default_config, free_port, start_gateway


def test_task_group_failure_after_start_exits_non_zero(tmp_path: Path) -> None:
    port = free_port()
    extra = "[identity]\nwatch = true\nwatch_interval_s = 0.2\n"
    gw = start_gateway(tmp_path, default_config(port, tmp_path, "", extra=extra), port)
    try:
        assert httpx2.get(gw.admin_base + "/healthz", timeout=5).status_code == 200
        # A real trigger: the identity watcher reads the changed config file, and tomllib recurses past the limit
        # on a deeply nested array (RecursionError, not a TOML error): the watcher's task ends with an error.
        gw.config.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
        try:
            code = gw.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                "the gateway kept running after its task group failed:\n" + gw.log.read_text()[-3000:]
            ) from None
        log = gw.log.read_text()
        assert code != 0, log[-3000:]
        assert "failed after start" in log
        assert "invalid state transition" not in log.lower()
    finally:
        gw.stop()
