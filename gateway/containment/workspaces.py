"""Per-agent workspaces and uids.

Each agent gets ``<workspace_root>/<agent>`` and, when the gateway runs as root, its own unprivileged uid from
the configured range. The workspace's owner *is* the record of the allocation: at start the root is scanned and
every workspace owned by a uid of the range keeps that uid, so an agent's files stay its own across restarts
without a separate database. Agents never share a uid or a directory.

With a quota (``max_workspace_mb``), each workspace is its own ext4 file system of exactly that size: a sparse
image file under ``<workspace_root>/.images`` loop-mounted (``nosuid,nodev``) on the workspace directory. The
kernel enforces the quota: a write past it fails with ENOSPC, whatever the worker does (many files, appends,
a tier that runs as the gateway's uid), and the files persist across calls and restarts in the image. Images
are mounted on first use and unmounted when the gateway stops. It needs root and loop devices (measured on the
reference host: ``mount -o loop`` of an 8 MiB image takes ~60 ms once per agent); without them a configured
quota is refused at start, never silently dropped.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path


class WorkspaceError(Exception):
    pass


@dataclass(frozen=True)
class Workspace:
    agent: str
    path: str
    uid: int
    gid: int


def check_traversable(path: Path) -> str | None:
    """Workers (other uids) must be able to walk down to the workspace root; say which parent blocks them."""
    for parent in [path, *path.parents]:
        try:
            st = os.stat(parent)
        except OSError:
            continue
        if not st.st_mode & stat.S_IXOTH:
            return f"{parent} (mode {stat.S_IMODE(st.st_mode):04o}) is not searchable by worker uids"
    return None


class Workspaces:
    def __init__(self, root: Path, uid_base: int, uid_count: int, as_root: bool, quota_mb: int | None = None):
        self.root = root
        self.as_root = as_root
        self.quota_mb = quota_mb
        self._mounted: list[str] = []
        if quota_mb is not None:
            missing = quota_needs(as_root)
            if missing:
                raise WorkspaceError(
                    f"max_workspace_mb cannot be enforced here (each workspace is a loop-mounted "
                    f"file system of that size): {missing}"
                )
        self._base = uid_base
        self._count = uid_count
        self._lock = threading.Lock()
        self._by_agent: dict[str, Workspace] = {}
        self._used: set[int] = set()
        self._next = uid_base
        root.mkdir(parents=True, exist_ok=True)
        if as_root:
            st = os.lstat(root)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
                raise WorkspaceError(f"workspace_root {root} must be a directory owned by root")
            os.chmod(root, 0o711)  # workers may pass through, but not list who else has a workspace
            blocked = check_traversable(root)
            if blocked:
                raise WorkspaceError(f"workspace_root {root}: {blocked}")
            self._scan()

    def _scan(self) -> None:
        for entry in os.scandir(self.root):
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and self._base <= st.st_uid < self._base + self._count:
                if st.st_uid in self._used:
                    raise WorkspaceError(f"workspaces {entry.path} and another share uid {st.st_uid}; fix the owners")
                self._used.add(st.st_uid)
                self._by_agent[entry.name] = Workspace(entry.name, entry.path, st.st_uid, st.st_uid)

    def _allocate(self) -> int:
        for _ in range(self._count):
            uid = self._next
            self._next = self._base + (self._next - self._base + 1) % self._count
            if uid in self._used:
                continue
            try:
                pwd.getpwuid(uid)
                continue  # a real account: never hand its files to a worker
            except KeyError:
                pass
            self._used.add(uid)
            return uid
        raise WorkspaceError(f"no free worker uid left in [{self._base}, {self._base + self._count})")

    def uid_for_probe(self) -> int:
        """A uid of the range nobody uses, for the start-up sandbox test."""
        for uid in range(self._base + self._count - 1, self._base - 1, -1):
            if uid not in self._used:
                try:
                    pwd.getpwuid(uid)
                except KeyError:
                    return uid
        return self._base

    def get(self, agent: str) -> Workspace:
        """The agent's workspace, created (and its uid allocated) on first use."""
        if "/" in agent or agent in ("", ".", ".."):
            raise WorkspaceError(f"bad agent key {agent!r}")
        with self._lock:
            ws = self._by_agent.get(agent)
            path = self.root / agent
            if (
                ws is not None
                and path.is_dir()
                and not path.is_symlink()
                and (self.quota_mb is None or os.path.ismount(path))
            ):
                return ws
            if not self.as_root:
                path.mkdir(mode=0o700, exist_ok=True)
                ws = Workspace(agent, str(path), os.getuid(), os.getgid())
            else:
                uid = ws.uid if ws is not None else self._allocate()
                try:
                    os.mkdir(path, 0o700)
                except FileExistsError:
                    st = os.lstat(path)
                    if not stat.S_ISDIR(st.st_mode):
                        raise WorkspaceError(f"{path} exists and is not a directory") from None
                if self.quota_mb is not None:
                    self._mount_quota(agent, path, uid)
                os.chown(path, uid, uid, follow_symlinks=False)
                os.chmod(path, 0o700)  # checked above: a directory, not a link, under a root-owned root
                ws = Workspace(agent, str(path), uid, uid)
            self._by_agent[agent] = ws
            return ws

    # --- quota -----------------------------------------------------------------------------------------

    def _mount_quota(self, agent: str, path: Path, uid: int) -> None:
        """Make ``path`` the mount point of the agent's own file system of ``quota_mb`` (see module doc)."""
        if os.path.ismount(path):
            return
        # The directory under the mount records the agent's uid too: after a restart the scan finds it there
        # (the image's files belong to that uid), before the image is mounted again.
        os.chown(path, uid, uid, follow_symlinks=False)
        os.chmod(path, 0o700)
        with os.scandir(path) as entries:
            occupied = any(entries)
        if occupied:
            raise WorkspaceError(
                f"{path} holds files but is not its quota file system: move them out, or into "
                "the workspace once mounted (max_workspace_mb applies to new workspaces)"
            )
        images = self.root / ".images"
        images.mkdir(mode=0o700, exist_ok=True)
        os.chmod(images, 0o700)
        image = images / f"{agent}.img"
        fresh = not image.exists()
        if fresh:
            with open(image, "wb") as f:
                f.truncate((self.quota_mb or 0) * 1024 * 1024)
            _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=1", str(image)])
        _run(["mount", "-o", "loop,nosuid,nodev", str(image), str(path)])
        self._mounted.append(str(path))
        if fresh:
            with contextlib.suppress(OSError):
                os.rmdir(path / "lost+found")

    def usage(self, agent: str) -> tuple[int, int] | None:
        """(bytes used, bytes of quota) of the agent's quota file system, or None without a quota."""
        ws = self._by_agent.get(agent)
        if self.quota_mb is None or ws is None:
            return None
        try:
            st = os.statvfs(ws.path)
        except OSError:
            return None
        return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize

    def close(self) -> None:
        """Unmount the quota file systems mounted by this gateway (their images keep the files)."""
        with self._lock:
            for path in reversed(self._mounted):
                try:
                    _run(["umount", path])
                except WorkspaceError:
                    with contextlib.suppress(WorkspaceError):
                        _run(["umount", "-l", path])  # a worker still inside: detach, the kernel finishes
            self._mounted.clear()
            self._by_agent.clear()


def quota_needs(as_root: bool) -> str | None:
    """What this host lacks to enforce a workspace quota, or None."""
    if not as_root:
        return "the gateway does not run as root"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control)"
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool, path=path) is None:
            return f"{tool} is not installed"
    return None


def _run(argv: list[str]) -> None:
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WorkspaceError(f"{argv[0]} failed: {exc}") from None
    if proc.returncode != 0:
        raise WorkspaceError(f"{argv[0]} failed: {(proc.stderr or proc.stdout).strip()[:300]}")
