"""Memory: a gateway loads only the libraries its configuration uses (issue 13, <= 100 MB RSS at 200 sessions).

regopy (rego-cpp, ~12 MB resident), redis (~7 MB), PyJWT, aiohttp and the OpenTelemetry SDK each cost the
process megabytes for as long as it lives; the default configuration (embedded RVM engine, API keys, no fleet, no
bundles, no tracing) needs none of them. The gateway runs as a real process through a wrapper that writes its
``sys.modules`` on SIGUSR1, after serving a real session and call; no RSS threshold is asserted (that would be
flaky), only which modules were loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx2

from tests.conftest import ECHO, KEYS, REPO, default_config, free_port, mcp_client, with_admin_port

# Libraries only some configurations need: engine = "regopy", engine = "opa", [fleet] / [[limits]] in Redis,
# [identity.jwt] or signed bundles, [tracing].
NOT_BY_DEFAULT = (
    "regopy",
    "redis",
    "jwt",
    "aiohttp",
    "opa_client",
    "opentelemetry.sdk",
    "gateway.policy.embedded",
    "trio",  # the gateway serves on asyncio: httpcore2 would import trio (and attrs) only because it is installed
)

# The policy, audit and lock subcommands' modules: imported when their command is named, never by serve.
CLI_ONLY = ("gateway.cli_policy", "gateway.cli_lock", "gateway.cli_diff")

WRAPPER = """
import os, signal, sys
sys.path.insert(0, os.getcwd())

def dump(*_):
    out = os.environ["GATEWAY_MODULES_OUT"]
    with open(out + ".tmp", "w") as f:
        f.write("\\n".join(sorted(name for name, module in sys.modules.items() if module is not None)))
    os.replace(out + ".tmp", out)

signal.signal(signal.SIGUSR1, dump)
sys.argv[0] = "gateway"
from gateway.cli import main
main()
"""


def loaded_modules(tmp_path: Path, engine: str = "embedded") -> tuple[set[str], str]:
    """The modules a gateway with the test default configuration had loaded when it stopped, after one session and
    one call; and its /proc/PID/maps while it served."""
    port = free_port()
    config = default_config(
        port, tmp_path, f'[[upstreams]]\nname = "echo"\ntransport = "stdio"\ncommand = {json.dumps(ECHO)}\n'
    )
    config = config.replace("[policy]\n", f'[policy]\nengine = "{engine}"\n')
    config, admin_port = with_admin_port(config)
    (tmp_path / "gateway.toml").write_text(config)
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    out = tmp_path / "modules.txt"
    log = tmp_path / "gateway.log"
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "wrapper.py"), "serve", "--config", str(tmp_path / "gateway.toml")],
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "GATEWAY_MODULES_OUT": str(out)},
    )
    try:
        deadline = time.monotonic() + 40
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx2.get(f"http://127.0.0.1:{admin_port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

        async def one_call() -> None:
            async with mcp_client(f"http://127.0.0.1:{port}/mcp", KEYS["ci-bot"][2]) as client:
                result = await client.call_tool("echo__echo", {"text": "hi"})
                assert not result.is_error, result

        anyio.run(one_call)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        proc.send_signal(signal.SIGUSR1)  # the wrapper writes sys.modules (between two bytecodes of the loop)
        while not out.exists():
            assert proc.poll() is None and time.monotonic() < deadline + 40, log.read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(15)
    return set(out.read_text().split()), maps


def test_default_gateway_loads_no_optional_library(tmp_path: Path) -> None:
    modules, maps = loaded_modules(tmp_path)
    assert "gateway.policy.rvm" in modules  # the wrapper saw the serving gateway's modules
    assert [m for m in NOT_BY_DEFAULT if m in modules] == []
    assert [m for m in CLI_ONLY if m in modules] == []
    assert "regopy" not in maps  # rego-cpp's shared library is not mapped into the process either


def test_regopy_engine_still_loads_regopy(tmp_path: Path) -> None:
    """The lazy imports move the cost to the configurations that need it; the regopy engine still serves."""
    modules, maps = loaded_modules(tmp_path, engine="regopy")
    assert {"regopy", "gateway.policy.embedded"} <= modules
    assert "regopy" in maps


def test_lint_builtin_list_matches_installed_regopy() -> None:
    """The lint's constant list of missing built-ins (kept so the default gateway never loads regopy) is what the
    installed rego-cpp says it implements."""
    from regopy import Interpreter

    from gateway.policy.lint import _OPA_BUILTINS, _SPECIAL, supported_builtins

    probe = Interpreter()
    assert supported_builtins() == frozenset(n for n in _OPA_BUILTINS if probe.is_builtin(n)) | _SPECIAL


COUNTER = """
import gc, os, signal, sys
sys.path.insert(0, os.getcwd())

def dump(*_):
    gc.collect()
    n = sum(1 for o in gc.get_objects() if type(o) is dict and str(o.get("name", "")).startswith("echo__tool_"))
    out = os.environ["GATEWAY_COUNT_OUT"]
    with open(out + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(out + ".tmp", out)

signal.signal(signal.SIGUSR1, dump)
sys.argv[0] = "gateway"
from gateway.cli import main
main()
"""


def test_an_open_session_does_not_keep_its_tools_list_answer(tmp_path: Path) -> None:
    """The SDK's per-session message router keeps the last message it sent alive until the next one; with calls on
    the fast path that is the session's tools/list answer (~1 KB a tool). The gateway empties the lists of an
    answer once it is on the wire (``gateway.http.sessions.hand_over``): the live tool entries of a 100-tool list
    do not grow with the sessions that listed it and stay open. Each answer is still whole, listed again too."""
    port = free_port()
    upstream = f'[[upstreams]]\nname = "echo"\ntransport = "stdio"\ncommand = {json.dumps([*ECHO, "--tools", "100"])}\n'
    config, admin_port = with_admin_port(default_config(port, tmp_path, upstream))
    (tmp_path / "gateway.toml").write_text(config)
    (tmp_path / "counter.py").write_text(COUNTER)
    out = tmp_path / "count.txt"
    log = tmp_path / "gateway.log"
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "counter.py"), "serve", "--config", str(tmp_path / "gateway.toml")],
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "GATEWAY_COUNT_OUT": str(out)},
    )

    def live_tool_entries() -> int:
        if out.exists():
            out.unlink()
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not out.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        return int(out.read_text())

    async def hold(sessions: int) -> tuple[int, int]:
        url = f"http://127.0.0.1:{port}/mcp"
        async with mcp_client(url, KEYS["ci-bot"][2]) as first:
            assert len((await first.list_tools()).tools) == 100
            one = await anyio.to_thread.run_sync(live_tool_entries)
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(sessions):
                    client = await stack.enter_async_context(mcp_client(url, KEYS["ci-bot"][2]))
                    for _ in range(2):  # the second answer is whole too: nothing the gateway keeps was emptied
                        assert len((await client.list_tools()).tools) == 100
                return one, await anyio.to_thread.run_sync(live_tool_entries)

    try:
        deadline = time.monotonic() + 40
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx2.get(f"http://127.0.0.1:{admin_port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        one, many = anyio.run(hold, 5)
        assert many - one < 100, (one, many)  # without the release: +99 entries per session that listed
    finally:
        proc.terminate()
        proc.wait(15)
