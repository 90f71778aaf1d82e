"""What this host can enforce, measured once at start, and what each profile would lack.

Every protection a profile relies on is probed for real (a throw-away bubblewrap sandbox is started as a worker
uid, cgroup directories are created and removed), not inferred from versions: a check that only reads a version
number says nothing about a kernel with user namespaces switched off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from gateway.containment.bwrap import ISOLATION
from gateway.containment.cgroups import CgroupSupport, probe_cgroups
from gateway.containment.profile import Profile

log = logging.getLogger("gateway.containment")

_SYS_LANDLOCK_CREATE_RULESET = 444
_LANDLOCK_CREATE_RULESET_VERSION = 1


def landlock_abi() -> int:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        abi = int(libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(abi, 0)


def seccomp_available() -> tuple[bool, str]:
    try:
        import pyseccomp  # noqa: F401
    except Exception as exc:  # ImportError, or RuntimeError when libseccomp is missing
        return False, f"pyseccomp/libseccomp not usable: {exc}"
    return True, ""


@dataclass
class HostCapabilities:
    root: bool
    uid: int
    bwrap: str | None
    bwrap_ok: bool
    bwrap_error: str
    landlock_abi: int
    seccomp: bool
    seccomp_error: str
    helper_python: str | None
    prlimit: str | None
    setpriv: str | None
    cgroups: CgroupSupport
    notes: list[str] = field(default_factory=list)

    @property
    def uid_drop(self) -> bool:
        return self.root

    def protections(self) -> dict[str, Any]:
        """The report for /readyz and the start-up log."""
        cg = self.cgroups
        return {
            "running_as_root": self.root,
            "per_agent_uid": self.uid_drop,
            "bubblewrap": self.bwrap_ok,
            "bubblewrap_error": self.bwrap_error or None,
            "landlock_abi": self.landlock_abi,
            "landlock_tcp_rules": self.landlock_abi >= 4,
            "landlock_scoping": self.landlock_abi >= 6,
            "seccomp": self.seccomp,
            "helper_python": self.helper_python,
            "cgroup": cg.version,
            "memory_limit": "cgroup" if cg.memory else "rlimit (address space)",
            "pids_limit": "cgroup" if cg.pids else ("rlimit (per agent uid)" if self.root else "unavailable"),
            "cpu_limit": "cgroup+rlimit" if cg.cpu else "rlimit (per process)",
            "kill_all": "cgroup" if cg.freezer or cg.version == "v2" else "process group / pid namespace",
            "notes": self.notes + cg.notes,
        }

    def missing(self, p: Profile) -> list[str]:
        """What profile ``p`` needs that this host cannot enforce (empty: its workers may start)."""
        need: list[str] = []
        if p.tier == "none":
            return need
        if not self.prlimit:
            need.append("prlimit(1) from util-linux, which sets the worker's rlimits")
        if p.tier == "process" and not self.setpriv:
            need.append("setpriv(1) from util-linux (no_new_privs, die with the gateway)")
        if p.tier == "process" and not self.uid_drop:
            need.append("a dedicated uid per agent (run the gateway as root, or use tier 'sandbox')")
        if p.tier == "sandbox":
            if not self.bwrap_ok:
                need.append(f"bubblewrap ({self.bwrap_error or 'not found'})")
            if self.landlock_abi < 1:
                need.append("Landlock (kernel 5.13+ with landlock in the lsm= list)")
            if not self.seccomp:
                need.append(f"seccomp ({self.seccomp_error})")
            if not self.helper_python:
                need.append("helper_python (a world-readable python3 for the in-sandbox helper)")
            if not self.cgroups.pids and not self.root and p.subprocesses:
                need.append(
                    "a pids limit: no delegated pids cgroup, and RLIMIT_NPROC does not isolate a non-root gateway"
                    " (delegate a cgroup, or set subprocesses = false)"
                )
        return need


def _check_helper(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not st.st_mode & 0o001:
        return None
    return os.path.realpath(path)


def _try_bwrap(bwrap: str, uid: int | None) -> str:
    """Start a minimal sandbox with the flags workers use; '' when it works, else bwrap's complaint."""
    args = [
        bwrap,
        *ISOLATION,
        "--ro-bind",
        "/usr",
        "/usr",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--",
        "/usr/bin/true",
    ]
    kwargs: dict[str, Any] = {}
    if uid is not None:
        kwargs = {"user": uid, "group": uid, "extra_groups": []}
    try:
        r = subprocess.run(args, env={}, capture_output=True, timeout=20, cwd="/", **kwargs)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if r.returncode != 0:
        return r.stderr.decode("utf-8", "replace").strip()[:300] or f"exit code {r.returncode}"
    return ""


def probe(helper_python: str, probe_uid: int | None, cgroup_tag: str) -> HostCapabilities:
    root = os.geteuid() == 0
    bwrap = shutil.which("bwrap")
    bwrap_error = "" if bwrap else "bwrap not found (apt-get install bubblewrap)"
    if bwrap:
        bwrap_error = _try_bwrap(bwrap, probe_uid if root else None)
    sec, sec_err = seccomp_available()
    caps = HostCapabilities(
        root=root,
        uid=os.geteuid(),
        bwrap=bwrap,
        bwrap_ok=bool(bwrap) and not bwrap_error,
        bwrap_error=bwrap_error,
        landlock_abi=landlock_abi(),
        seccomp=sec,
        seccomp_error=sec_err,
        helper_python=_check_helper(helper_python),
        prlimit=shutil.which("prlimit"),
        setpriv=shutil.which("setpriv"),
        cgroups=probe_cgroups(cgroup_tag, root),
    )
    if not root:
        caps.notes.append("not root: workers run as the gateway's own uid inside a user namespace")
    return caps
