"""Start one worker process in its tier, and stop it.

The chain for the ``sandbox`` tier, as root: the gateway starts ``/bin/sh`` as the agent's own uid (Popen
``user``/``group``/``extra_groups=[]``: no ``preexec_fn``, which is not thread-safe) with an empty environment
(bubblewrap becomes pid 1 of the sandbox and ``/proc/1/environ`` would show whatever it inherited). The shell
waits at a gate until the gateway has put it in the worker's cgroups and set its rlimits (``prlimit``), then
executes bubblewrap, which executes the in-sandbox helper (Landlock, seccomp, egress bridge), which executes the
worker. Nothing can fork before the gate opens, so no process escapes the cgroup.

The ``process`` tier is the same gate without bubblewrap: own uid, clean environment, rlimits, cgroups, its
own session. The ``none`` tier is a plain child process.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import orjson

from connectors.base import open_piped
from gateway.containment import bwrap as bw
from gateway.containment.cgroups import CgroupSupport, WorkerCgroup
from gateway.containment.egress import EgressGrant, EgressProxy
from gateway.containment.probe import HostCapabilities
from gateway.containment.profile import Profile, env_for, fill, paths_for
from gateway.containment.seccomp import build_filter
from gateway.containment.workspaces import Workspace, Workspaces

log = logging.getLogger("gateway.containment")

HELPER_SOURCE = (Path(__file__).parent / "inside.py").read_bytes()
_GATE = 'read _ || exit 125; {unset}exec "$@"'
_BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


class LaunchError(Exception):
    """The worker could not be started; the message is safe to show the agent."""


@dataclass
class LaunchRequest:
    server: str
    agent: str
    """The agent's key (directory name of its workspace)."""
    profile: Profile
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    """Upstream-specific variables on top of the profile's (placeholders allowed)."""
    cwd: str | None = None
    """Host path (the sandbox sees it at the same place); default: the agent's workspace."""
    script: bytes | None = None
    """Run this Python script inside the helper instead of executing argv (the built-in ``files`` tools)."""


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)  # inheritable on purpose: bwrap reads it
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class WorkerProcess:
    """A started worker: its process, cgroup and egress socket, and why it was stopped (if it was)."""

    def __init__(
        self,
        wid: str,
        req: LaunchRequest,
        ws: Workspace,
        proc: anyio.abc.Process,
        cgroup: WorkerCgroup | None,
        close_egress: Callable[[], Awaitable[None]] | None,
        uid: int | None,
    ):
        self.id = wid
        self.server = req.server
        self.agent = req.agent
        self.profile = req.profile
        self.tier = req.profile.tier
        self.workspace = ws
        self.proc = proc
        self.cgroup = cgroup
        self.uid = uid
        self._close_egress = close_egress
        self.kill_reason: str | None = None
        self.started = time.monotonic()
        self._oom0 = cgroup.oom_kills() if cgroup else 0
        self._pids0 = cgroup.pids_refused() if cgroup else 0
        self._cleaned = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float | None:
        return self.cgroup.cpu_seconds() if self.cgroup else None

    def breach(self, cpu_start: float | None) -> str | None:
        """A limit this worker has run into, read from its cgroup (None: within its limits)."""
        cg = self.cgroup
        if cg is None:
            return None
        if cg.oom_kills() > self._oom0:
            return "memory"
        if cg.pids_refused() > self._pids0:
            return "pids"
        if cpu_start is not None:
            used = cg.cpu_seconds()
            if used is not None and used - cpu_start > self.profile.cpu_seconds:
                return "cpu"
        return None

    def exit_reason(self, code: int | None) -> str:
        """Why the worker ended, when the gateway did not stop it itself."""
        if self.kill_reason:
            return self.kill_reason
        late = self.breach(None)
        if late:
            return late
        if code is not None and code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            return "cpu"
        return "crash"

    def signal_all(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.cgroup is not None:
            self.cgroup.kill_all()

    async def kill(self, reason: str) -> None:
        if self.kill_reason is None and self.proc.returncode is None:
            self.kill_reason = reason
        self.signal_all()

    async def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        with anyio.CancelScope(shield=True):
            self.signal_all()
            if self.proc.returncode is None:
                with anyio.move_on_after(5):
                    await self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    try:
                        await stream.aclose()
                    except Exception:  # already closed or broken: nothing left to release
                        pass
            if self._close_egress is not None:
                await self._close_egress()
            if self.cgroup is not None:
                await self.cgroup.remove()


@dataclass
class TierCommand:
    """How a tier starts a worker, behind the shared gate (own uid, cgroups, rlimits, own session)."""

    command: list[str]
    fds: list[int]
    """Inherited by the worker (closed in the gateway once it started)."""
    close: Callable[[], Awaitable[None]] | None
    """Releases what the tier set up for this worker (its egress socket)."""
    env: dict[str, str]
    cwd: str


@dataclass
class TierRequest:
    """What every tier builds its command from: the launch, the worker's id, and what the gate already filled in
    (environment, command line and working directory with the workspace placed; the uid, None when not root)."""

    req: LaunchRequest
    profile: Profile
    ws: Workspace
    wid: str
    env: dict[str, str]
    argv: list[str]
    cwd: str
    uid: int | None


TierBuilder = Callable[[TierRequest], Awaitable[TierCommand]]


class Launcher:
    """Starts workers. A tier is a ``TierBuilder`` in ``self.tiers``: a heavier one (gVisor ``runsc``, a
    micro-VM) is one more entry that returns its command line, with the probe saying when the host has it."""

    def __init__(
        self,
        caps: HostCapabilities,
        workspaces: Workspaces,
        egress: EgressProxy | None,
        cgroups: CgroupSupport,
        runtime_dir: Path,
        helper_python: str,
    ):
        self.caps = caps
        self.workspaces = workspaces
        self.egress = egress
        self.cgroups = cgroups
        self.runtime_dir = runtime_dir
        self.helper_python = caps.helper_python or helper_python
        self._ids = itertools.count(1)
        self.deny_file = str(runtime_dir / "denied")
        self.deny_dir = str(runtime_dir / "denied.d")
        self._prlimit = caps.prlimit or "/usr/bin/prlimit"
        self._setpriv = caps.setpriv or "/usr/bin/setpriv"
        self.tiers: dict[str, TierBuilder] = {"process": self._process_command, "sandbox": self._sandbox_command}

    def prepare_runtime(self) -> None:
        """The masks' sources: an empty, mode-0000, root-owned file and directory (workers cannot open them)."""
        Path(self.deny_dir).mkdir(mode=0o000, exist_ok=True)
        Path(self.deny_file).touch(mode=0o000, exist_ok=True)
        os.chmod(self.deny_dir, 0)
        os.chmod(self.deny_file, 0)

    def _rlimits(self, p: Profile, long_lived: bool) -> dict[str, tuple[int, int]]:
        """rlimits (prlimit(1) option names), set by the worker on itself at the gate.

        Lowering one's own limits needs no privilege; setting another process's limits from the gateway would
        need CAP_SYS_RESOURCE, which a root gateway in a container often lacks (this host, for one).
        """
        mb = 1024 * 1024
        limits = {
            "fsize": (p.max_file_mb * mb, p.max_file_mb * mb),
            "nofile": (p.open_files, p.open_files),
            "core": (0, 0),
        }
        # The address-space limit is the floor when there is no memory cgroup; with one it is only a backstop,
        # since address space overcounts (thread stacks and malloc arenas are reserved, not used).
        mem = p.memory_mb * mb if not self.cgroups.memory else (4 * p.memory_mb + 1024) * mb
        limits["as"] = (mem, mem)
        cpu = int(p.cpu_seconds + 0.999)
        if not long_lived or not self.cgroups.cpu:
            # Per process; for a long-lived worker without a CPU cgroup it bounds the worker's whole life.
            limits["cpu"] = (cpu, cpu + 1)
        if not self.cgroups.pids and self.caps.root:
            limits["nproc"] = (p.pids, p.pids)  # counts all processes of the agent's uid
        return limits

    async def spawn(self, req: LaunchRequest, long_lived: bool) -> WorkerProcess:
        p = req.profile
        try:
            ws = self.workspaces.get(req.agent)
        except OSError as exc:
            raise LaunchError(f"cannot prepare the agent's workspace: {exc.strerror}") from None
        wid = f"w{next(self._ids)}"
        env = env_for(p, req.env, ws.path, req.agent)
        argv = [fill(a, ws.path, req.agent) for a in req.argv]
        cwd = fill(req.cwd, ws.path, req.agent) if req.cwd else ws.path
        if p.tier == "none":
            env.setdefault("PATH", os.environ.get("PATH", _BASE_PATH))
            proc = await open_piped(argv, env, cwd)
            return WorkerProcess(wid, req, ws, proc, None, None, None)
        uid = ws.uid if self.caps.root else None
        cgroup = None
        close_egress = None
        fds: list[int] = []
        try:
            if self.cgroups.bases:
                cgroup = WorkerCgroup(self.cgroups, f"{wid}.{os.getpid()}")
                cgroup.limit(p.memory_mb, p.pids)
            tc = await self.tiers[p.tier](TierRequest(req, p, ws, wid, env, argv, cwd, uid))
            command, fds, close_egress, proc_env, proc_cwd = tc.command, tc.fds, tc.close, tc.env, tc.cwd
            # The gate is the first line of the worker's stdin: the shell's `read` takes exactly that line.
            unset = "" if "PWD" in proc_env else "unset PWD; "
            limits = [f"--{name}={soft}:{hard}" for name, (soft, hard) in self._rlimits(p, long_lived).items()]
            shell = ["/bin/sh", "-c", _GATE.format(unset=unset), "sh", self._prlimit, *limits, "--", *command]
            ids: dict[str, Any] = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
            try:
                proc = await open_piped(shell, proc_env, proc_cwd, pass_fds=fds, umask=0o077, **ids)
            except (OSError, ValueError) as exc:  # ValueError: a NUL in an upstream's env or command
                raise LaunchError(f"cannot start the worker: {getattr(exc, 'strerror', None) or exc}") from None
            worker = WorkerProcess(wid, req, ws, proc, cgroup, close_egress, uid)
            cgroup = None
            close_egress = None
            try:
                if worker.cgroup is not None:
                    worker.cgroup.attach(proc.pid)
                assert proc.stdin is not None
                await proc.stdin.send(b"go\n")
            except (OSError, anyio.BrokenResourceError) as exc:
                await worker.kill("crash")
                err = b""
                with anyio.move_on_after(1):
                    err = await proc.stderr.receive() if proc.stderr else b""
                await worker.cleanup()
                log.warning("worker %s could not be confined: %s (%s)", wid, exc, err[:500])
                raise LaunchError(f"cannot confine the worker: {exc}") from None
            return worker
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            if cgroup is not None:
                await cgroup.remove()
            if close_egress is not None:
                await close_egress()

    async def _process_command(self, t: TierRequest) -> TierCommand:
        # Dies with the gateway (the sandbox tier gets this from bwrap), and never gains privileges.
        command = [self._setpriv, "--pdeathsig", "KILL", "--no-new-privs", "--", *t.argv]
        return TierCommand(command, [], None, t.env, t.cwd)

    async def _sandbox_command(self, t: TierRequest) -> TierCommand:
        req, p, ws, wid, env, argv, cwd, uid = t.req, t.profile, t.ws, t.wid, t.env, t.argv, t.cwd, t.uid
        assert self.caps.bwrap is not None
        paths = paths_for(p, ws.path, req.agent)
        passwd, group, hosts = bw.passwd_files(
            ws.uid if uid is not None else os.getuid(), ws.gid if uid is not None else os.getgid(), ws.path
        )
        fds: list[int] = []
        close_egress = None
        try:
            fds += [
                _memfd("helper", HELPER_SOURCE),
                _memfd("passwd", passwd),
                _memfd("group", group),
                _memfd("hosts", hosts),
                _memfd("seccomp", build_filter(p.network, p.subprocesses)),
            ]
            files = bw.SandboxFiles(
                fds[0],
                fds[1],
                fds[2],
                fds[3],
                deny_file=self.deny_file,
                deny_dir=self.deny_dir,
                pinned=bw.pin(paths, str(self.workspaces.root)),
            )
            fds += [fd for fd in files.pinned.values() if fd >= 0]
            if req.script is not None:
                files.tool_fd = _memfd("tool", req.script)
                fds.append(files.tool_fd)
            allowlist = p.network == "allowlist"
            spec: dict[str, Any] = {
                "paths": bw.landlock_paths(p, paths),
                "bpf_fd": fds[4],
                "cwd": cwd,
                "env": env,
                "mode": "script" if req.script is not None else "exec",
                "script": bw.TOOL,
                "net": None if p.network == "host" else {"connect": [bw.BRIDGE_PORT] if allowlist else []},
            }
            if allowlist:
                if self.egress is None:
                    raise LaunchError("the egress proxy is not running")
                grant = EgressGrant(req.server, req.agent, f"{wid}-{os.getpid()}", p.allow_hosts)
                files.egress_socket, close_egress = await self.egress.open(grant, uid)
                spec["bridge"] = {"port": bw.BRIDGE_PORT, "socket": bw.EGRESS_SOCKET}
                proxy = f"http://127.0.0.1:{bw.BRIDGE_PORT}"
                for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
                    env.setdefault(k, proxy)
            fds.append(_memfd("spec", orjson.dumps(spec)))
            command = bw.bwrap_argv(self.caps.bwrap, p, paths, files, self.helper_python, fds[-1], argv, cwd)
        except BaseException:
            for fd in fds:
                os.close(fd)
            if close_egress is not None:
                await close_egress()
            raise
        # bwrap starts with an empty environment: it is pid 1 of the sandbox, and /proc/1/environ is readable
        return TierCommand(command, fds, close_egress, {}, "/")
