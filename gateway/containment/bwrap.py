"""The bubblewrap command line of a sandboxed worker.

Only what the profile grants is mounted, at the same path as on the host: system files the worker needs to
run (read-only ``/usr`` and its symlinks, a few ``/etc`` files, generated ``passwd``/``group``/``hosts``),
the profile's read-only and read-write paths, and masks over its denied paths. Mounts are emitted parents
first (a tmpfs mounted after a bind hides the bind). bwrap resolves bind sources as the worker's uid, so
nothing is mounted that this uid could not open itself; granted paths below a workspace, which the agent can
replace with links, are opened by the gateway without following any link and bound by fd (``pin``).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from gateway.containment.profile import AgentPaths, Profile, within

HELPER_DIR = "/run/mcpgw"
HELPER = f"{HELPER_DIR}/inside.py"
TOOL = f"{HELPER_DIR}/tool.py"
EGRESS_SOCKET = f"{HELPER_DIR}/egress.sock"
BRIDGE_PORT = 3128
_ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/nsswitch.conf")
_ETC_NET = ("/etc/resolv.conf", "/etc/gai.conf")

# Every worker's sandbox: all namespaces, no nested user namespaces, no capabilities, dies with the gateway, own
# session (no TIOCSTI). The host probe starts its test sandbox with the same flags.
ISOLATION = (
    "--unshare-all",
    "--unshare-user",
    "--disable-userns",
    "--die-with-parent",
    "--new-session",
    "--cap-drop",
    "ALL",
)


@dataclass
class Mount:
    dest: str
    args: list[str]
    order: int
    """Tie-break for the same depth: system 0, profile binds 1, masks 2."""


@dataclass
class SandboxFiles:
    """File descriptors (inherited by bwrap) holding generated content and the masks' sources."""

    helper_fd: int
    passwd_fd: int
    group_fd: int
    hosts_fd: int
    tool_fd: int | None = None
    egress_socket: str | None = None
    deny_file: str = ""
    deny_dir: str = ""
    pinned: dict[str, int] = field(default_factory=dict)
    """Granted paths below the workspace root -> an O_PATH fd of what was checked (-1: mount nothing)."""


def _depth(path: str) -> int:
    return 0 if path == "/" else path.rstrip("/").count("/")


def _system_mounts(profile: Profile, tmp_mb: int) -> list[Mount]:
    mounts = [
        Mount("/proc", ["--proc", "/proc"], 0),
        Mount("/dev", ["--dev", "/dev"], 0),
        Mount("/tmp", ["--size", str(tmp_mb * 1024 * 1024), "--perms", "1777", "--tmpfs", "/tmp"], 0),
        Mount("/usr", ["--ro-bind", "/usr", "/usr"], 0),
    ]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        try:
            st = os.lstat(top)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            mounts.append(Mount(top, ["--symlink", os.readlink(top), top], 0))
        elif stat.S_ISDIR(st.st_mode):
            mounts.append(Mount(top, ["--ro-bind", top, top], 0))
    etc = list(_ETC_FILES) + (list(_ETC_NET) if profile.network == "host" else [])
    for path in etc:
        if os.path.exists(path):
            mounts.append(Mount(path, ["--ro-bind-try", path, path], 0))
    return mounts


def deny_mounts(deny: tuple[str, ...], deny_file: str, deny_dir: str, granted: tuple[str, ...]) -> list[Mount]:
    """Masks over denied paths that exist: an empty, unreadable, root-owned directory or file on top.

    A denied path that is a link denies what it leads to: its target is masked where the profile grants it
    (elsewhere it is not mounted at all). The link itself is left alone (a mount on it would follow it
    anyway). A mask only ever hides, so an agent pointing a link of its own somewhere hides that from itself.
    Paths that do not exist have nothing to hide.
    """
    out = []
    for path in deny:
        real = os.path.realpath(path)
        targets = [path] + ([real] if real != path and within(real, granted) else [])
        for target in targets:
            try:
                st = os.lstat(target)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            src = deny_dir if stat.S_ISDIR(st.st_mode) else deny_file
            out.append(Mount(target, ["--ro-bind", src, target], 2))
    return out


def bwrap_argv(
    bwrap: str,
    profile: Profile,
    paths: AgentPaths,
    files: SandboxFiles,
    helper_python: str,
    spec_fd: int,
    argv: list[str],
    cwd: str,
) -> list[str]:
    mounts = _system_mounts(profile, max(16, min(profile.memory_mb, profile.max_file_mb)))
    mounts.append(Mount("/etc/passwd", ["--ro-bind-data", str(files.passwd_fd), "/etc/passwd"], 0))
    mounts.append(Mount("/etc/group", ["--ro-bind-data", str(files.group_fd), "/etc/group"], 0))
    mounts.append(Mount("/etc/hosts", ["--ro-bind-data", str(files.hosts_fd), "/etc/hosts"], 0))
    mounts.append(Mount(HELPER, ["--ro-bind-data", str(files.helper_fd), HELPER], 0))
    if files.tool_fd is not None:
        mounts.append(Mount(TOOL, ["--ro-bind-data", str(files.tool_fd), TOOL], 0))
    if files.egress_socket is not None:
        mounts.append(Mount(EGRESS_SOCKET, ["--bind", files.egress_socket, EGRESS_SOCKET], 0))
    writable = set(paths.read_write)
    for path in dict.fromkeys(paths.read_only + paths.read_write):
        fd = files.pinned.get(path)
        if fd is None:
            kind = "--bind-try" if path in writable else "--ro-bind-try"
            mounts.append(Mount(path, [kind, path, path], 1))
        elif fd >= 0:
            kind = "--bind-fd" if path in writable else "--ro-bind-fd"
            mounts.append(Mount(path, [kind, str(fd), path], 1))
    mounts.extend(deny_mounts(paths.deny, files.deny_file, files.deny_dir, paths.read_only + paths.read_write))
    mounts.sort(key=lambda m: (_depth(m.dest), m.order))
    args = [
        bwrap,
        *ISOLATION,
        "--hostname",
        "worker",
        "--clearenv",
    ]
    if profile.network == "host":
        args.append("--share-net")
    for m in mounts:
        args.extend(m.args)
    # The helper's spec (with the worker's environment) travels in an inherited fd: host command lines are
    # world-readable, and bwrap's would otherwise show every secret an upstream gets through its env.
    args.extend(
        ["--remount-ro", "/", "--chdir", "/", "--", helper_python, "-I", "-S", HELPER, str(spec_fd), "--", *argv]
    )
    return args


def pin(paths: AgentPaths, workspace_root: str) -> dict[str, int]:
    """Open the granted paths below the workspace root (agent-writable ground) as they are now.

    A path that is a link, or has one on the way, gets -1 (mount nothing): bwrap would mount whatever the link
    names that the worker's uid may open (the host's ``/``, its ``/tmp``). Binding the fd, not the path, leaves
    no window to swap a checked directory for a link.
    """
    below = workspace_root.rstrip("/") + "/"
    pinned = {}
    for path in dict.fromkeys(paths.read_only + paths.read_write):
        if not path.startswith(below):
            continue
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            pinned[path] = -1
            continue
        if os.readlink(f"/proc/self/fd/{fd}") != path:
            os.close(fd)
            fd = -1
        pinned[path] = fd
    return pinned


def landlock_paths(profile: Profile, paths: AgentPaths) -> list[tuple[str, str]]:
    """(path, 'ro' | 'rw' | 'dev') rules for the helper: the system files plus the profile's paths."""
    # Listing directories anywhere is harmless (only granted paths are mounted) and keeps `ls /` working.
    rules: list[tuple[str, str]] = [("/", "list"), ("/usr", "ro"), ("/etc", "ro"), (HELPER_DIR, "ro"), ("/proc", "ro")]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.isdir(top) and not os.path.islink(top):
            rules.append((top, "ro"))
    rules += [("/dev", "dev"), ("/tmp", "rw")]
    rules += [(p, "ro") for p in paths.read_only if p not in paths.read_write]
    rules += [(p, "rw") for p in paths.read_write]
    return rules


def passwd_files(uid: int, gid: int, home: str) -> tuple[bytes, bytes, bytes]:
    """Generated /etc/passwd, /etc/group, /etc/hosts: the worker learns nothing about the host's accounts."""
    passwd = f"root:x:0:0:root:/nonexistent:/usr/sbin/nologin\nworker:x:{uid}:{gid}:worker:{home}:/bin/sh\n"
    passwd += "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    group = f"root:x:0:\nworker:x:{gid}:\nnogroup:x:65534:\n"
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tworker\n"
    return passwd.encode(), group.encode(), hosts.encode()
