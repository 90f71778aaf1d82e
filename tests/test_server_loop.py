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


def test_auto_picks_uvloop_and_httptools_when_installed_whatever_the_upstreams() -> None:
    for upstreams in (REMOTE, STRICT + CONTAINED, STDIO, REMOTE + STDIO):
        cfg = load(upstreams)
        assert cfg.event_loop == "uvloop" and cfg.server.http_parser == "httptools"  # type: ignore[attr-defined]
        assert load('[server]\nloop = "uvloop"\n' + upstreams).event_loop == "uvloop"  # type: ignore[attr-defined]
    cfg = load('[server]\nloop = "asyncio"\nhttp = "h11"\n')
    assert cfg.event_loop == "asyncio" and cfg.server.http_parser == "h11"  # type: ignore[attr-defined]


PROBE = "ls /proc/$$/fd; umask; id -G; exec 1>&-; sleep 2; exit 3"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_child_starts_the_same_on_either_loop(loop: str) -> None:
    """uvloop's own subprocesses ignore close_fds (a child held the agent port's listening socket), take no umask,
    user or group, and show a closed output only at exit. ``open_piped`` starts every child with Popen and only
    watches it on the loop: on both loops the child inherits no descriptor, gets its umask and groups, and a
    closed output is seen at once, its exit code when it exits."""
    import asyncio
    import socket

    import anyio
    import uvloop

    from connectors.base import open_piped

    async def probe() -> tuple[list[str], float, int, bool]:
        listener = socket.socket()
        listener.set_inheritable(True)
        try:
            proc = await open_piped(["sh", "-c", PROBE], {"PATH": "/usr/bin:/bin"}, None, umask=0o027, extra_groups=[])
            out = b""
            t0 = time.monotonic()
            assert proc.stdout is not None and proc.stdin is not None
            async for chunk in proc.stdout:
                out += chunk
            eof_after = time.monotonic() - t0
            code = await proc.wait()
            try:
                await proc.stdin.send(b"x\n")
                broken = False
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                broken = True
            await proc.aclose()
            return out.decode().split(), eof_after, code, broken
        finally:
            listener.close()

    lines, eof_after, code, broken = (uvloop.run if loop == "uvloop" else asyncio.run)(probe())
    fds, umask, groups = lines[:-2], lines[-2], lines[-1]
    assert set(fds) <= {"0", "1", "2", "3"}, fds  # 3: ls's own directory
    assert umask == "0027" and groups == "0", lines  # extra_groups=[]: only the primary group
    assert eof_after < 1.5 and code == 3 and broken, (eof_after, code, broken)


def test_a_full_pipe_makes_the_writer_wait_not_fail() -> None:
    import anyio
    import uvloop

    from connectors.base import open_piped

    async def pump() -> int:
        proc = await open_piped(["cat"], None, None)
        assert proc.stdin is not None and proc.stdout is not None
        got = 0

        async def read() -> None:
            nonlocal got
            assert proc.stdout is not None
            async for chunk in proc.stdout:
                got += len(chunk)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            for _ in range(64):  # 4 MiB, far past a pipe's 64 KiB
                await proc.stdin.send(b"y" * 65536)
            await proc.stdin.aclose()
        await proc.wait()
        return got

    assert uvloop.run(pump()) == 64 * 65536


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
        assert f"event loop uvloop, HTTP parser {http}" in gw.log.read_text()  # auto, with a stdio upstream
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
