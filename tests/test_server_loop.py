"""``[server] loop`` and ``http``: the event loop and the agent port's HTTP parser, chosen at load, and a gateway
that serves calls with each."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx2
import pytest

from gateway import config as config_module
from tests.conftest import default_config, free_port, start_gateway
from tests.test_containment_profiles import STRICT, errors, load
from tests.test_protocol_bad_input import open_session, recorder_gateway, still_serving

CONTAINED = '[[upstreams]]\nname = "sh"\ntransport = "builtin"\ntools = "shell"\ncontainment = "strict"\n'
STDIO = '[[upstreams]]\nname = "p"\ntransport = "stdio"\ncommand = ["cat"]\n'
REMOTE = '[[upstreams]]\nname = "r"\ntransport = "http"\nurl = "http://127.0.0.1:1/mcp"\n'


def test_auto_picks_uvloop_only_when_no_upstream_is_a_process_and_httptools_when_installed() -> None:
    cfg = load(REMOTE)
    assert cfg.event_loop == "uvloop" and cfg.server.http_parser == "httptools"  # type: ignore[attr-defined]
    for local in (STRICT + CONTAINED, STDIO, REMOTE + STDIO):
        assert load(local).event_loop == "asyncio"  # type: ignore[attr-defined]  # uvloop spawns unsafely
    cfg = load('[server]\nloop = "asyncio"\nhttp = "h11"\n')
    assert cfg.event_loop == "asyncio" and cfg.server.http_parser == "h11"  # type: ignore[attr-defined]


def test_uvloop_with_a_local_upstream_is_refused_at_load() -> None:
    for local in (STRICT + CONTAINED, STDIO):
        errs = errors('[server]\nloop = "uvloop"\n' + local)
        assert any("cannot run stdio or builtin upstreams" in e for e in errs), errs
    assert load('[server]\nloop = "uvloop"\n' + REMOTE).event_loop == "uvloop"  # type: ignore[attr-defined]


def test_no_process_is_started_on_uvloop() -> None:
    """uvloop ignores close_fds: a child it starts holds the parent's inheritable descriptors (the agent port's
    listening socket is one). The spawn sites ask ``spawns_safely`` first; a reload cannot bypass the load check."""
    import asyncio
    import socket

    import uvloop

    from connectors.base import spawns_safely

    async def probe() -> tuple[bool, set[str]]:
        listener = socket.socket()
        listener.set_inheritable(True)
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", "ls /proc/$$/fd", stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
        )
        out, _ = await proc.communicate()
        listener.close()
        return spawns_safely(), set(out.decode().split())

    safe, fds = asyncio.run(probe())
    assert safe and fds <= {"0", "1", "2", "3"}, fds  # 3: ls's own directory
    safe, fds = uvloop.run(probe())
    assert not safe and len(fds) > 4, fds  # the reason for the guard


def test_a_bad_or_missing_choice_is_refused_and_auto_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    errs = errors('[server]\nloop = "trio"\nhttp = "h2"\n')
    assert any(e.startswith("g.toml: server.loop") for e in errs) and any("server.http" in e for e in errs), errs
    monkeypatch.setattr(config_module, "_installed", lambda module: False)
    errs = errors('[server]\nloop = "uvloop"\nhttp = "httptools"\n')
    assert any("'uvloop' is not installed" in e for e in errs), errs
    assert any("'httptools' is not installed" in e for e in errs), errs
    cfg = load("")
    assert cfg.event_loop == "asyncio" and cfg.server.http_parser == "h11"  # type: ignore[attr-defined]


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_the_gateway_serves_calls_with_each_parser(tmp_path: Path, http: str) -> None:
    gw = recorder_gateway(tmp_path, f'http = "{http}"\n')
    try:
        still_serving(gw, open_session(gw))
        assert f"event loop asyncio, HTTP parser {http}" in gw.log.read_text()  # auto: a stdio upstream
    finally:
        gw.stop()


def test_the_gateway_serves_reloads_and_stops_on_uvloop(tmp_path: Path) -> None:
    """uvloop handles signals its own way: SIGHUP still reloads (loop.add_signal_handler) and SIGTERM still
    stops the gateway cleanly (uvicorn's handler)."""
    port = free_port()
    gw = start_gateway(tmp_path, default_config(port, tmp_path, ""), port)
    try:
        open_session(gw)
        assert "event loop uvloop, HTTP parser httptools" in gw.log.read_text()
        os.kill(gw.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        metric = 'mcp_gateway_policy_reloads_total{result="unchanged"} 1.0'
        while metric not in httpx2.get(gw.admin_base + "/metrics").text:
            assert time.monotonic() < deadline, "no reload after SIGHUP"
            time.sleep(0.1)
        open_session(gw)
        gw.proc.terminate()
        assert gw.proc.wait(20) in (0, -signal.SIGTERM)  # uvicorn raises the signal again once it has stopped
        assert "session manager shutting down" in gw.log.read_text()  # the lifespan ran to its end
    finally:
        gw.stop()
