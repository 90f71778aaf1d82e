"""A gateway whose task group fails after start-up stops (non-zero, for a supervisor to restart it) instead of
answering /healthz 200 while every /mcp call fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx2

from tests.conftest import default_config, free_port, start_gateway

# Loaded by the gateway's interpreter at start (PYTHONPATH): once the flag file exists, the identity watcher's
# reload raises an error nothing expects, as a bug in any long-running task would.
_FAULT = """
import os
from pathlib import Path
import gateway.identity_reload as m
_prepare = m.prepare
def prepare(path, serving):
    if Path(os.environ["GATEWAY_TEST_FAULT"]).exists():
        raise RuntimeError("injected fault")
    return _prepare(path, serving)
m.prepare = prepare
"""


def test_task_group_failure_after_start_exits_non_zero(tmp_path: Path) -> None:
    port = free_port()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_FAULT)
    flag = tmp_path / "fault"
    extra = "[identity]\nwatch = true\nwatch_interval_s = 0.2\n"
    env = {"PYTHONPATH": str(site), "GATEWAY_TEST_FAULT": str(flag)}
    gw = start_gateway(tmp_path, default_config(port, tmp_path, "", extra=extra), port, env=env)
    try:
        assert httpx2.get(gw.admin_base + "/healthz", timeout=5).status_code == 200
        flag.touch()
        gw.config.write_text(gw.config.read_text() + "\n# changed\n")
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
        assert "injected fault" in log  # the cause is in the operator's log
    finally:
        gw.stop()


def test_deeply_nested_config_is_a_config_error(tmp_path: Path) -> None:
    """tomllib recurses once per nesting level: a deeply nested array is refused like any bad syntax."""
    bad = tmp_path / "bad.toml"
    bad.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "nested too deeply" in run.stdout + run.stderr, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
