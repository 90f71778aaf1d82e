"""The seccomp filter of sandboxed workers, compiled to BPF in the gateway (libseccomp via pyseccomp).

Default allow with a deny list: the goal is to close the kernel interfaces sandbox escapes use (ptrace, mount,
namespaces, bpf, io_uring, keyrings, raw and non-local sockets, module loading, handle-based opens) without
breaking ordinary programs. Non-native syscall ABIs (32-bit ``int 0x80``, x32) are killed by libseccomp's
architecture check. The in-sandbox helper loads the program just before it executes the worker.
"""

from __future__ import annotations

import errno
import functools
import os

DENY_ALWAYS = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "unshare",
    "setns",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "open_by_handle_at",
    "name_to_handle_at",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "acct",
    "quotactl",
    "iopl",
    "ioperm",
    "lookup_dcookie",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "vhangup",
    "uselib",
    "personality",
    "fanotify_init",
)

CLONE_NEW = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "CLONE_NEWTIME": 0x00000080,
}
CLONE_THREAD = 0x00010000
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET = 1, 2, 10, 16, 17
AF_KEY, AF_VSOCK = 15, 40
SOCK_TYPE_MASK, SOCK_RAW, SOCK_PACKET = 0xF, 3, 10
INT = 0xFFFFFFFF
"""The kernel reads ``int`` arguments from the low 32 bits; a filter comparing all 64 could be stepped around."""
TIOCSTI, TIOCLINUX = 0x5412, 0x541C


@functools.lru_cache(maxsize=16)
def build_filter(network: str, subprocesses: bool) -> bytes:
    """BPF for a profile's (network, subprocesses); cached, since only these two inputs shape it."""
    import pyseccomp as sc

    eperm = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)
    for name in DENY_ALWAYS:
        try:
            f.add_rule(eperm, name)
        except (RuntimeError, ValueError, OSError):
            pass  # not a syscall on this architecture
    # clone3 passes its flags in memory a filter cannot read: refuse it so libc falls back to clone(2).
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for flag in CLONE_NEW.values():
        f.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    if not subprocesses:
        f.add_rule(eperm, "fork")
        f.add_rule(eperm, "vfork")
        f.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    for request in (TIOCSTI, TIOCLINUX):
        f.add_rule(eperm, "ioctl", sc.Arg(1, sc.MASKED_EQ, INT, request))
    for call in ("socket", "socketpair"):
        f.add_rule(eperm, call, sc.Arg(1, sc.MASKED_EQ, SOCK_TYPE_MASK, SOCK_RAW))
        f.add_rule(eperm, call, sc.Arg(1, sc.MASKED_EQ, SOCK_TYPE_MASK, SOCK_PACKET))
        if network == "none":
            f.add_rule(eperm, call, sc.Arg(0, sc.NE, AF_UNIX))
        elif network == "allowlist":
            # Loopback only inside the sandbox's own network namespace (to reach the egress bridge).
            f.add_rule(eperm, call, sc.Arg(0, sc.GT, AF_INET6))
            for family in (0, *range(AF_INET + 1, AF_INET6)):
                f.add_rule(eperm, call, sc.Arg(0, sc.EQ, family))
        else:
            for family in (AF_PACKET, AF_KEY, AF_VSOCK):
                f.add_rule(eperm, call, sc.Arg(0, sc.MASKED_EQ, INT, family))
    fd = os.memfd_create("seccomp-bpf")
    with os.fdopen(fd, "w+b") as out:
        f.export_bpf(out)
        out.flush()
        out.seek(0)
        return out.read()
