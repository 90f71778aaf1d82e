"""Shared test helpers: start a real gateway process on a free port, connect the real MCP SDK client to it."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parent.parent
ECHO = [sys.executable, str(REPO / "tests" / "fixtures" / "echo_server.py")]

KEYS = {
    "ci-bot": ("platform", ["ci"], "key-ci-bot"),
    "admin": ("platform", ["admin"], "key-admin"),
    "researcher": ("research", [], "key-researcher"),
}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api_keys_toml() -> str:
    out = []
    for agent, (team, roles, key) in KEYS.items():
        out.append(
            f'[[identity.api_keys]]\nagent = "{agent}"\nteam = "{team}"\nroles = {roles!r}\nsha256 = "{sha(key)}"\n'
        )
    return "\n".join(out).replace("'", '"')


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in items) + "]"


def stdio_upstream(name: str, command: list[str], extra: str = "") -> str:
    return f'[[upstreams]]\nname = "{name}"\ntransport = "stdio"\ncommand = {toml_list(command)}\n{extra}\n'


def default_config(
    port: int, workdir: Path, upstreams: str, extra: str = "", policy: Path | None = None, admin_port: int | None = None
) -> str:
    return f"""
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port or free_port()}"

{api_keys_toml()}

[policy]
path = "{policy or REPO / "rego"}"

[audit]
path = "{workdir / "audit.jsonl"}"

{extra}

{upstreams}
"""


@dataclass
class RunningGateway:
    proc: subprocess.Popen[bytes]
    port: int
    config: Path
    workdir: Path
    log: Path
    admin_port: int = 9464

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_base(self) -> str:
        """The admin listener: /metrics, /readyz, /healthz (never served on the agents' port)."""
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def url(self) -> str:
        return self.base + "/mcp"

    @property
    def audit(self) -> Path:
        return self.workdir / "audit.jsonl"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def audit_records(self) -> list[dict]:
        import orjson

        if not self.audit.exists():
            return []
        return [orjson.loads(line) for line in self.audit.read_bytes().splitlines() if line.strip()]


def with_admin_port(config_text: str) -> tuple[str, int]:
    """The config with an admin listener on a free port unless it names one (tests run side by side, so the
    default 127.0.0.1:9464 would collide), and that port."""
    import tomllib

    try:
        server = tomllib.loads(config_text).get("server", {})
    except tomllib.TOMLDecodeError:
        return config_text, 9464  # a test of a broken config: the gateway refuses it before listening
    if "admin_listen" in server:
        return config_text, int(str(server["admin_listen"]).rpartition(":")[2])
    port = free_port()
    line = f'admin_listen = "127.0.0.1:{port}"\n'
    if re.search(r"^\[server\][ \t]*$", config_text, re.M):
        return re.sub(r"^\[server\][ \t]*$\n?", lambda m: m.group(0) + line, config_text, count=1, flags=re.M), port
    return f"[server]\n{line}\n" + config_text, port


def start_gateway(
    workdir: Path,
    config_text: str,
    port: int,
    ready_timeout: float = 40.0,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
) -> RunningGateway:
    workdir.mkdir(parents=True, exist_ok=True)
    config_text, admin_port = with_admin_port(config_text)
    config = workdir / "gateway.toml"
    config.write_text(config_text)
    log = workdir / "gateway.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    gw = RunningGateway(proc, port, config, workdir, log, admin_port)
    deadline = time.monotonic() + ready_timeout
    url = gw.admin_base + "/readyz" if wait_ready else gw.base + "/healthz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{log.read_text()}")
        try:
            r = httpx2.get(url, timeout=1)
            if r.status_code == 200:
                return gw
        except httpx2.HTTPError:
            pass
        time.sleep(0.1)
    gw.stop()
    raise RuntimeError(f"gateway not ready in {ready_timeout}s:\n{log.read_text()}")


_PROBE_WRAPPER = """
import os, signal, sys
sys.path.insert(0, os.getcwd())
{probe}

def dump(*_):
    out = os.environ["GATEWAY_PROBE_OUT"]
    with open(out + ".tmp", "w") as f:
        f.write(str(probe()))
    os.replace(out + ".tmp", out)

signal.signal(signal.SIGUSR1, dump)
sys.argv[0] = "gateway"
from gateway.cli import main
main()
"""


@dataclass
class ProbedGateway:
    """A serving gateway process that answers ``probe()`` (its wrapper's ``probe`` function, run in the process on
    SIGUSR1, between two bytecodes of the event loop): what it holds in memory, seen from inside."""

    proc: subprocess.Popen[bytes]
    port: int
    out: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def probe(self) -> str:
        self.out.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not self.out.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)
        return self.out.read_text()


@contextmanager
def probed_gateway(workdir: Path, upstreams: str, probe: str, engine: str = "embedded") -> Iterator[ProbedGateway]:
    """A gateway with the test default configuration, started through a wrapper defining ``probe`` (Python source
    of a ``def probe()``), yielded once ready and stopped after."""
    port = free_port()
    config = default_config(port, workdir, upstreams).replace("[policy]\n", f'[policy]\nengine = "{engine}"\n')
    config, admin_port = with_admin_port(config)
    (workdir / "gateway.toml").write_text(config)
    (workdir / "wrapper.py").write_text(_PROBE_WRAPPER.format(probe=probe))
    log = workdir / "gateway.log"
    proc = subprocess.Popen(
        [sys.executable, str(workdir / "wrapper.py"), "serve", "--config", str(workdir / "gateway.toml")],
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "GATEWAY_PROBE_OUT": str(workdir / "probe.txt")},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx2.get(f"http://127.0.0.1:{admin_port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                time.sleep(0.1)
        yield ProbedGateway(proc, port, workdir / "probe.txt", log)
    finally:
        proc.terminate()
        proc.wait(15)


@contextmanager
def echo_http_server(*extra: str) -> Iterator[str]:
    """The echo fixture over streamable HTTP on a free port (``extra``: its flags); yields its URL once it answers."""
    port = free_port()
    proc = subprocess.Popen([*ECHO, "--transport", "http", "--port", str(port), *extra], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        for _ in range(300):
            try:
                httpx2.get(url, timeout=0.5)
                break
            except httpx2.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait()


@asynccontextmanager
async def mcp_client(
    url: str, key: str | None, mode: str = "legacy", headers: dict[str, str] | None = None
) -> AsyncIterator[Client]:
    h = dict(headers or {})
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    http = httpx2.AsyncClient(headers=h, timeout=30)
    async with http, Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as c:
        yield c


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def core_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway in front of the real mcp-server-time and our echo fixture, with the shipped policies."""
    workdir = tmp_path_factory.mktemp("gw")
    port = free_port()
    upstreams = stdio_upstream("time", ["mcp-server-time", "--local-timezone", "UTC"]) + stdio_upstream("echo", ECHO)
    gw = start_gateway(workdir, default_config(port, workdir, upstreams), port)
    yield gw
    gw.stop()


NODE_MODULES = REPO / "tests" / "npm" / "node_modules"


def node_containment(work: Path, uid_base: int) -> str:
    """``[containment]`` with a "node" sandbox profile that runs the npm MCP servers of tests/npm (their own
    uid range from ``uid_base``, so that modules running at once do not share workers' uids)."""
    return f"""
[containment]
workspace_root = "{work}/workspaces"
uid_base = {uid_base}
uid_count = 100

[containment.profiles.node]
tier = "sandbox"
read_only = ["/usr", "{NODE_MODULES}"]
read_write = ["{{workspace}}"]
env = {{ PATH = "/usr/bin:/bin", HOME = "{{workspace}}" }}
memory_mb = 256
pids = 64
"""


def gateway_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS`` from the repository, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )
