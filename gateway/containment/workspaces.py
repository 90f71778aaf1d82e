"""Per-agent workspaces and uids.

Each agent gets ``<workspace_root>/<agent>`` and, when the gateway runs as root, its own unprivileged uid from
the configured range. The workspace's owner *is* the record of the allocation: at start the root is scanned and
every workspace owned by a uid of the range keeps that uid, so an agent's files stay its own across restarts
without a separate database. Agents never share a uid or a directory.
"""

from __future__ import annotations

import os
import pwd
import stat
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
    def __init__(self, root: Path, uid_base: int, uid_count: int, as_root: bool):
        self.root = root
        self.as_root = as_root
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
            if ws is not None and path.is_dir() and not path.is_symlink():
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
                os.chown(path, uid, uid, follow_symlinks=False)
                os.chmod(path, 0o700)  # checked above: a directory, not a link, under a root-owned root
                ws = Workspace(agent, str(path), uid, uid)
            self._by_agent[agent] = ws
            return ws
