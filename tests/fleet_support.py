"""Real fleet parts for the tests: redis-server, nginx (deploy/nginx/mcp-gateway.conf), gateway replicas."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO, RunningGateway, default_config, free_port, start_gateway, stdio_upstream

SECRET = "fleet-test-secret-0123456789abcdef0123456789"
NGINX_CONF = REPO / "deploy" / "nginx" / "mcp-gateway.conf"


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    port: int

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_redis(workdir: Path, port: int | None = None) -> Proc:
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=(workdir / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    _wait_port(port, proc, "redis-server")
    return Proc(proc, port)


def start_nginx(workdir: Path, replicas: list[int], affinity: str | None = None, port: int | None = None) -> Proc:
    """nginx with the shipped configuration, its listen address and replica list rewritten for this test."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    text = NGINX_CONF.read_text()
    servers = "".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n" for p in replicas)
    text = re.sub(r"(?m)^\s*server 127\.0\.0\.1:\d+ .*;\n", "", text)
    text = text.replace("        keepalive 64;", servers + "        keepalive 64;")
    text = text.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{port};")
    if affinity is not None:
        text = text.replace(f"# {affinity}", affinity)
    conf = workdir / "nginx.conf"
    conf.write_text(text)
    proc = subprocess.Popen(
        ["nginx", "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log"), "-g", "daemon off;"],
        stdout=(workdir / "nginx.out").open("wb"),
        stderr=subprocess.STDOUT,
    )
    _wait_port(port, proc, "nginx")
    return Proc(proc, port)


def fleet_toml(
    redis_port: int, replica: str, port: int, hosts: list[str], extra: str = "", heartbeat_s: float = 0.5
) -> str:
    return f"""
[fleet]
redis_url = "redis://127.0.0.1:{redis_port}/0"
replica_id = "{replica}"
advertise = "http://127.0.0.1:{port}"
heartbeat_s = {heartbeat_s}
ttl_s = {heartbeat_s * 4}
secret = "{SECRET}"
{extra}
"""


def start_replica(
    workdir: Path,
    replica: str,
    port: int,
    redis_port: int,
    hosts: list[str],
    fleet_extra: str = "",
    extra: str = "",
    heartbeat_s: float = 0.5,
    upstreams: str | None = None,
    policy: Path | None = None,
) -> RunningGateway:
    upstreams = upstreams or stdio_upstream("time", ["mcp-server-time", "--local-timezone", "UTC"])
    allowed = ", ".join(f'"{h}"' for h in hosts)
    fleet = fleet_toml(redis_port, replica, port, hosts, fleet_extra, heartbeat_s)
    config = default_config(port, workdir, upstreams, extra=fleet + extra, policy=policy)
    config = config.replace("[server]\n", f"[server]\nallowed_hosts = [{allowed}]\n", 1)
    return start_gateway(workdir, config, port)
