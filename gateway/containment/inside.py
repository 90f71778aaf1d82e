"""The in-sandbox exec helper: runs inside bubblewrap as the worker, then becomes the worker.

Started as ``python3 -I -S inside.py SPEC_FD -- ARGV...`` (the spec, JSON, in an inherited fd: it holds the
worker's environment, which must not show on a command line) after bubblewrap has made the mounts (Landlock
applied before bubblewrap would break bubblewrap's own set-up). In order it: starts the egress bridge (network
= allowlist), sets no_new_privs, applies Landlock (file rights per path, TCP ports, scoping of abstract sockets
and signals), loads the seccomp program the gateway compiled, changes to the working directory and executes
the worker — or, for the built-in ``files`` tools, runs the tool script in this process.

Standard library only, no site packages (``-I -S``): it must run on any host python3 and import nothing a
worker could have planted. Any failure before the exec is fatal (exit 125): a worker never runs with half its
confinement.
"""

import ctypes
import json
import os
import sys

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
BIND_TCP, CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1 << 0, 1 << 1

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.prctl.restype = ctypes.c_int


class RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class NetPort(ctypes.Structure):
    _fields_ = [("allowed", ctypes.c_uint64), ("port", ctypes.c_uint64)]


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def die(msg):
    sys.stderr.write("mcpgw-helper: " + msg + "\n")
    sys.stderr.flush()
    os._exit(125)


def check(ret, what):
    if ret < 0:
        err = ctypes.get_errno()
        die(f"{what} failed: {os.strerror(err)}")
    return ret


def fs_rights(abi):
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def landlock(spec):
    abi = libc.syscall(SYS_CREATE_RULESET, None, 0, 1)
    if abi < 1:
        die("Landlock is not available")
    handled = fs_rights(abi)
    attr = RulesetAttr(handled, 0, 0)
    size = 8
    # TCP port rules (ABI 4+) back up the network namespace and seccomp's socket rules; on older kernels
    # those two still hold, so the rules are skipped rather than refusing to run.
    net = spec.get("net") if abi >= 4 else None
    if net is not None:
        attr.net = BIND_TCP | CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL
        size = 24
    fd = libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    check(fd, "landlock_create_ruleset")
    ro = EXECUTE | READ_FILE | READ_DIR
    dev = READ_FILE | WRITE_FILE | READ_DIR | (TRUNCATE & handled) | (IOCTL_DEV & handled)
    for path, kind in spec["paths"]:
        rights = {"ro": ro, "rw": handled, "dev": dev, "list": READ_DIR}[kind] & handled
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # a path that does not exist grants nothing
        try:
            if os.readlink(f"/proc/self/fd/{pfd}") != path:
                continue  # nor does a link (in a workspace, the agent's own: it could point at "/")
            if not os.path.isdir(path):
                rights &= FILE_RIGHTS
            rule = PathBeneath(rights, pfd)
            check(libc.syscall(SYS_ADD_RULE, fd, RULE_PATH_BENEATH, ctypes.byref(rule), 0), "landlock rule " + path)
        finally:
            os.close(pfd)
    for port in (net or {}).get("connect", []):
        port_rule = NetPort(CONNECT_TCP, port)
        check(libc.syscall(SYS_ADD_RULE, fd, RULE_NET_PORT, ctypes.byref(port_rule), 0), "landlock port rule")
    check(libc.syscall(SYS_RESTRICT_SELF, fd, 0), "landlock_restrict_self")
    os.close(fd)


def seccomp(bpf):
    if len(bpf) % 8:
        die("seccomp program has a bad length")
    n = len(bpf) // 8
    prog_buf = (SockFilter * n).from_buffer_copy(bpf)
    prog = SockFprog(n, ctypes.cast(prog_buf, ctypes.POINTER(SockFilter)))
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


def no_new_privs():
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _pipe(src, dst):
    import socket

    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def bridge(listener, path, bpf):
    """Forward TCP connections on the sandbox's loopback to the gateway's egress proxy (a Unix socket)."""
    import socket
    import threading

    no_new_privs()
    seccomp(bpf)
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            continue
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            up.connect(path)
        except OSError:
            conn.close()
            up.close()
            continue
        for a, b in ((conn, up), (up, conn)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def find(prog, env):
    if "/" in prog:
        return prog
    for d in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":"):
        cand = os.path.join(d or ".", prog)
        if os.access(cand, os.X_OK) and not os.path.isdir(cand):
            return cand
    sys.stderr.write(f"mcpgw-helper: {prog}: command not found\n")
    os._exit(127)


def read_fd(fd):
    """All of an inherited fd's content; the fd is closed, so the worker never inherits it."""
    data = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return data


def main():
    spec = json.loads(read_fd(int(sys.argv[1])))
    argv = sys.argv[3:] if len(sys.argv) > 2 and sys.argv[2] == "--" else []
    bpf = read_fd(spec["bpf_fd"])
    br = spec.get("bridge")
    if br is not None:
        import socket  # only here: socket and threading cost ~12 ms of start-up

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", br["port"]))
        listener.listen(64)
        if os.fork() == 0:
            try:
                bridge(listener, br["socket"], bpf)
            finally:
                os._exit(0)
        listener.close()
    no_new_privs()
    landlock(spec)
    seccomp(bpf)
    cwd = spec.get("cwd")
    if cwd:
        try:
            os.chdir(cwd)
        except OSError as exc:
            sys.stderr.write(f"mcpgw-helper: cannot change to {cwd}: {exc.strerror}\n")
            os._exit(126)
    env = spec.get("env", {})
    if spec.get("mode") == "script":
        os.environ.clear()
        os.environ.update(env)
        sys.argv = [spec["script"]]
        with open(spec["script"]) as f:
            code = compile(f.read(), spec["script"], "exec")
        exec(code, {"__name__": "__main__", "__file__": spec["script"]})
        sys.stdout.flush()
        os._exit(0)
    if not argv:
        die("no command")
    try:
        os.execve(find(argv[0], env), argv, env)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in an upstream's env or command
        sys.stderr.write(f"mcpgw-helper: cannot execute {argv[0]}: {getattr(exc, 'strerror', None) or exc}\n")
        os._exit(126)


if __name__ == "__main__":
    main()
