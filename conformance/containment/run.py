"""The containment battery: every escape attempt, through a real gateway, by two routes.

Route ``shell``: the built-in shell tool (a fresh one-shot sandbox per call). Route ``stdio``: the ``run`` tool
of a stdio MCP server that itself runs as a contained worker (long-lived, one per agent). The gateway is a real
process started here as whoever runs this (root in CI, so the battery proves that workers drop to their own
uid), the client the real MCP SDK over HTTP. Prints a table and ends with ``N passed, M failed`` (a passed
attempt is a blocked one); exits non-zero when any attempt got through.

Usage: conformance/run containment [--only ID,ID] [--routes shell,stdio] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import anyio  # noqa: E402
import httpx2  # noqa: E402

from conformance.containment.attempts import ATTEMPTS, PROBED, Attempt  # noqa: E402
from tests.conftest import KEYS, default_config, free_port, mcp_client, start_gateway  # noqa: E402

AGENT, OTHER = "ci-bot", "admin"
UID_BASE, UID_COUNT = 300000, 1000
LIMITS = {"memory_mb": 128, "pids": 48, "cpu_seconds": 2, "timeout_s": 6, "max_file_mb": 16, "open_files": 128}
ROUTES = {"shell": ("sh", "sh-net"), "stdio": ("box", "box-net")}


class Listener:
    """A host-side listener that only counts who reached it."""

    def __init__(self, kind: str, address: Any):
        self.count = 0
        family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
        stype = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(family, stype)
        self.sock.bind(address)
        if stype == socket.SOCK_STREAM:
            self.sock.listen(16)
        self.kind = kind
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while True:
            try:
                if self.kind == "udp":
                    self.sock.recvfrom(4096)
                else:
                    conn, _ = self.sock.accept()
                    conn.close()
            except OSError:
                return
            self.count += 1


def host_ip() -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.254", 9))
            ip = str(s.getsockname()[0])
            return ip if not ip.startswith("127.") else "127.0.0.1"
    except OSError:
        return "127.0.0.1"


@dataclass
class RouteResult:
    exit_code: int | None
    stdout: str
    stderr: str
    error: str
    """The tool error text when the call failed (limit, crash), else ''."""


@dataclass
class Row:
    attempt: str
    title: str
    route: str
    tier: str
    blocked: bool
    seen: str


@dataclass
class Context:
    values: dict[str, str] = field(default_factory=dict)
    listeners: dict[str, Listener] = field(default_factory=dict)
    victim: Any = None
    gw: Any = None
    uid_base: int = UID_BASE
    uid_count: int = UID_COUNT
    other_uid: int = -1
    gateway_uid: int = os.geteuid()
    egress_seen: float = 0.0

    def fill(self, program: str) -> str:
        for k, v in self.values.items():
            program = program.replace("{" + k + "}", v)
        return program

    def gateway_healthy(self) -> bool:
        try:
            return httpx2.get(self.gw.base + "/healthz", timeout=5).status_code == 200 and self.gw.proc.poll() is None
        except httpx2.HTTPError:
            return False

    def metric(self, name: str, labels: str = "") -> float:
        text = httpx2.get(self.gw.admin_base + "/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def egress_denied(self) -> float:
        return self.metric("mcp_gateway_egress_denied_total")

    def leftover_processes(self) -> list[str]:
        found = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                uid = os.stat(f"/proc/{pid}").st_uid
            except OSError:
                continue
            if cmd.startswith("sleep 60") and UID_BASE <= uid < UID_BASE + UID_COUNT:
                found.append(f"{pid}:{cmd}")
        return found


def profile(name: str, box: bool, egress: bool, tcp: str) -> str:
    """The shell's profile, or the box server's: the same grants plus the server's own code, read-only."""
    read_only = ["/usr", "/etc/ssl"] + ([f"{REPO}/conformance/containment"] if box else [])
    net = (
        f'network = "allowlist"\nallow_hosts = ["allowed.invalid:443", "localhost:{tcp}"]'
        if egress
        else 'deny = ["{workspace}/.secrets"]'
    )
    limits = "\n".join(f"{k} = {v}" for k, v in LIMITS.items())
    return f"""
[containment.profiles.{name}]
tier = "sandbox"
read_only = {json.dumps(read_only)}
read_write = ["{{workspace}}"]
{net}
env = {{ LANG = "C.UTF-8", PATH = "/usr/bin:/bin", HOME = "{{workspace}}" }}
{limits}
"""


def config(port: int, work: Path, ctx: Context) -> str:
    tcp = ctx.values["TCP"]
    names = ("strict", "strict-box", "egress", "egress-box")
    profiles = "".join(profile(n, "box" in n, "egress" in n, tcp) for n in names)
    box = f'command = ["/usr/bin/python3", "{REPO}/conformance/containment/box_server.py"]'
    return default_config(
        port,
        work,
        f"""
[[upstreams]]
name = "sh"
transport = "builtin"
tools = "shell"
containment = "strict"

[[upstreams]]
name = "box"
transport = "stdio"
{box}
containment = "strict-box"

[[upstreams]]
name = "sh-net"
transport = "builtin"
tools = "shell"
containment = "egress"

[[upstreams]]
name = "box-net"
transport = "stdio"
{box}
containment = "egress-box"
""",
        extra=f"""
[containment]
workspace_root = "{work}/workspaces"
uid_base = {UID_BASE}
uid_count = {UID_COUNT}
idle_timeout_s = 600

{profiles}
""",
        policy=REPO / "tests" / "containment_policy",
    )


async def call(client: Any, tool: str, args: dict[str, Any]) -> RouteResult:
    r = await client.call_tool(tool, args)
    text = "".join(getattr(c, "text", "") for c in r.content)
    s = r.structured_content
    if isinstance(s, dict) and "stdout" in s:
        return RouteResult(s.get("exit_code"), s.get("stdout", ""), s.get("stderr", ""), text if r.is_error else "")
    return RouteResult(None, "", "", text)


LIMIT_WORDS = {"pids": "process limit", "memory": "memory limit", "cpu": "CPU time limit", "timeout": "(timeout_s"}
RAN = "battery-program-started"
"""Echoed before each program: a call that never ran its program has blocked nothing."""


def ran(a: Attempt, res: RouteResult) -> str | None:
    """Why the attempt's result proves nothing (its program did not run as far as its probes), or None."""
    if a.limit is not None:
        return None  # the error naming the limit is the proof
    if a.ends_worker and "worker exited unexpectedly" in res.error:
        return None
    if RAN not in res.stdout:
        return "the program did not run"
    want = a.program.count(f"print('{PROBED}')")
    if res.stdout.count(PROBED) < want:
        return f"a probe did not run to its end ({res.stdout.count(PROBED)} of {want})"
    if a.expect is not None and a.expect not in res.stdout:
        return f"expected {a.expect!r} in the output"
    return None


def judge(a: Attempt, res: RouteResult, ctx: Context) -> tuple[bool, str]:
    out = res.stdout + res.stderr + res.error
    seen = (res.error or res.stderr or res.stdout).strip().splitlines()
    blocked = True
    notes = []
    vacuous = ran(a, res)
    if vacuous is not None:
        blocked = False
        notes.append(f"PROVES NOTHING: {vacuous}")
    if "ESCAPED" in res.stdout:
        blocked = False
        notes.append("ESCAPED")
    if a.secret is not None and ctx.values[a.secret] in out:
        blocked = False
        notes.append("secret leaked")
    if a.limit is not None:
        word = LIMIT_WORDS[a.limit]
        if word not in res.error:
            blocked = False
            notes.append(f"not stopped by the {a.limit} limit")
        else:
            seen = [res.error.split("stopped: ")[-1].split("\n")[0]]
    for check in a.checks:
        ok, what = check(res, ctx)
        if not ok:
            blocked = False
        notes.append(what)
    first = next((s for s in seen if s.strip() and not s.startswith("exit code") and s not in (RAN, PROBED)), "")
    if first.startswith("The tool's worker was stopped: "):
        first = first[len("The tool's worker was stopped: ") :]
    return blocked, "; ".join([first[:90], *[n for n in notes if n]])[:160]


async def prepare(ctx: Context, work: Path) -> None:
    """What the attempts reach for: the other agent's files and /tmp, a denied path, host listeners."""
    gw = ctx.gw
    async with mcp_client(gw.url, KEYS[OTHER][2]) as c:
        for tool in ("sh__run", "box__run"):
            v = ctx.values
            shared = f"/tmp/shared-{v['RAND']}"  # world-readable: only a private /tmp keeps it from the agent
            command = (
                f"echo {v['OTHER_MARK']} > secret.txt; echo {v['SHARED_MARK']} > {shared}; chmod 644 {shared}; id -u"
            )
            r = await call(c, tool, {"command": command})
            if r.exit_code != 0:
                raise RuntimeError(f"preparing the other agent failed: {r}")
            ctx.other_uid = int(r.stdout.split()[-1])
    async with mcp_client(gw.url, KEYS[AGENT][2]) as c:
        r = await call(c, "sh__run", {"command": "id -u"})
        uid = int(r.stdout.split()[-1])
    # A host process of the agent's own uid: only the pid namespace keeps the worker's signals from it.
    ids: dict[str, Any] = {"user": uid, "group": uid, "extra_groups": []} if os.geteuid() == 0 else {}
    ctx.victim = subprocess.Popen(["sleep", "3600"], start_new_session=True, **ids)
    ctx.values["VICTIM"] = str(ctx.victim.pid)
    secrets_dir = work / "workspaces" / AGENT / ".secrets"
    secrets_dir.mkdir(exist_ok=True)
    key = secrets_dir / "key"
    key.write_text(ctx.values["DENY_MARK"] + "\n")
    for p in (secrets_dir, key):
        os.chown(p, uid, uid)  # readable by the worker's uid: only the mask stands in the way
    os.chmod(secrets_dir, 0o755)
    os.chmod(key, 0o644)


async def stop_worker(ctx: Context, client: Any, route: str, tool: str) -> None:
    """Make the stdio route's worker go away (a limit breach), then wait for its processes to be gone."""
    if route == "stdio":
        await client.call_tool(tool, {"command": "python3 -c 'x = bytearray(1 << 30)'"})
    deadline = time.monotonic() + 10
    while ctx.leftover_processes() and time.monotonic() < deadline:
        await anyio.sleep(0.1)


async def run_routes(ctx: Context, routes: list[str], attempts: list[Attempt]) -> list[Row]:
    rows = []
    async with mcp_client(ctx.gw.url, KEYS[AGENT][2]) as client:
        for a in attempts:
            for route in routes:
                server = ROUTES[route][0 if a.profile == "strict" else 1]
                tool = f"{server}__run"
                if a.profile == "egress":
                    ctx.egress_seen = ctx.egress_denied()
                t0 = time.monotonic()
                try:
                    res = await call(client, tool, {"command": f"echo {RAN}\n" + ctx.fill(a.program)})
                except Exception as exc:  # judged like any answer: without a limit to name, it proves nothing
                    res = RouteResult(None, "", "", f"error: {exc}")
                if a.after == "stop-worker":
                    await stop_worker(ctx, client, route, tool)
                blocked, seen = judge(a, res, ctx)
                rows.append(Row(a.id, a.title, route, "sandbox", blocked, seen))
                print(
                    f"  {a.id:16} {route:6} {'blocked' if blocked else 'NOT BLOCKED':11} "
                    f"{time.monotonic() - t0:5.1f}s  {seen}",
                    flush=True,
                )
    return rows


def table(rows: list[Row]) -> str:
    head = f"{'attempt':16} {'route':6} {'tier':8} {'result':12} error seen"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.attempt:16} {r.route:6} {r.tier:8} {'blocked' if r.blocked else 'NOT BLOCKED':12} {r.seen}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated attempt ids")
    ap.add_argument("--routes", default="shell,stdio")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    attempts = [a for a in ATTEMPTS if not args.only or a.id in args.only.split(",")]
    routes = [r for r in args.routes.split(",") if r]
    if os.geteuid() != 0:
        print("note: not root; workers run as this user inside user namespaces")
    work = Path(tempfile.mkdtemp(prefix="containment-battery.", dir="/tmp"))
    os.chmod(work, 0o711)
    home = work / "home"
    (home / ".ssh").mkdir(parents=True)
    rand = secrets.token_hex(4)
    ctx = Context()
    v = ctx.values
    v.update(
        {
            "RAND": rand,
            "SSH_MARK": f"SSH-PRIVATE-{rand}",
            "OTHER_MARK": f"OTHER-AGENT-{rand}",
            "SHARED_MARK": f"SHARED-TMP-{rand}",
            "DENY_MARK": f"DENIED-{rand}",
            "GW_SECRET": f"GW-SECRET-{rand}",
            "OTHER_AGENT": OTHER,
            "WS_ROOT": str(work / "workspaces"),
            "OWN_WS": str(work / "workspaces" / AGENT),
            "OTHER_WS": str(work / "workspaces" / OTHER),
            "DECOY_KEY": str(home / ".ssh" / "id_rsa"),
            "HOST_MARK": f"/tmp/containment-escape-{rand}",
            "USR_MARK": f"/usr/escape-{rand}",
            "WS_ROOT_MARK": str(work / "workspaces" / f"escape-{rand}"),
            "HOST_IP": host_ip(),
            "ABSTRACT": f"mcpgw-battery-{rand}",
            "HOST_SOCK": str(work / "host.sock"),
            "GW_CMD": "gateway serve --config",
            "MAX_FILE_BYTES": str(LIMITS["max_file_mb"] * 1024 * 1024),
            "OPEN_FILES": str(LIMITS["open_files"]),
        }
    )
    (home / ".ssh" / "id_rsa").write_text(f"-----BEGIN KEY----- {v['SSH_MARK']}\n")
    os.chmod(home / ".ssh" / "id_rsa", 0o644)  # world-readable on purpose: only the sandbox may stop it
    ctx.listeners = {
        "tcp": Listener("tcp", ("127.0.0.1", 0)),
        "tcp_any": Listener("tcp", ("0.0.0.0", 0)),
        "udp": Listener("udp", ("0.0.0.0", 0)),
        "dns": Listener("udp", ("0.0.0.0", 0)),
        "abstract": Listener("unix", "\0" + v["ABSTRACT"]),
        "unix": Listener("unix", v["HOST_SOCK"]),
    }
    os.chmod(v["HOST_SOCK"], 0o777)
    v.update(
        {
            "TCP": str(ctx.listeners["tcp"].port),
            "TCP_ANY": str(ctx.listeners["tcp_any"].port),
            "UDP": str(ctx.listeners["udp"].port),
            "DNS": str(ctx.listeners["dns"].port),
        }
    )
    port = free_port()
    rows: list[Row] = []
    try:
        ctx.gw = start_gateway(
            work, config(port, work, ctx), port, env={"HOME": str(home), "GATEWAY_TEST_SECRET": v["GW_SECRET"]}
        )
        v["GW_PID"] = str(ctx.gw.proc.pid)
        print(
            f"containment battery: {len(attempts)} attempts x {len(routes)} routes, gateway pid {v['GW_PID']}, "
            f"running as uid {os.geteuid()}",
            flush=True,
        )
        ready = httpx2.get(ctx.gw.admin_base + "/readyz", timeout=5).json()
        prot = ready.get("containment", {}).get("protections", {})
        print("protections: " + ", ".join(f"{k}={val}" for k, val in prot.items() if k != "notes"), flush=True)
        anyio.run(prepare, ctx, work)
        rows = anyio.run(run_routes, ctx, routes, attempts)
    finally:
        if ctx.gw is not None:
            ctx.gw.stop()
        if ctx.victim is not None:
            ctx.victim.kill()
        for listener in ctx.listeners.values():
            listener.sock.close()
        for p in (v["HOST_MARK"], v["USR_MARK"]):
            if os.path.exists(p):
                os.unlink(p)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(rows))
    passed = sum(r.blocked for r in rows)
    failed = len(rows) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and rows else 1


if __name__ == "__main__":
    sys.exit(main())
