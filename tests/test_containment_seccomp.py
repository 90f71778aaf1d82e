"""The sandbox's seccomp filter, loaded for real in a child process the way the in-sandbox helper loads it.

The kernel reads ``int`` syscall arguments (a socket's family, an ioctl's request) from the low 32 bits of a
64-bit register, while a seccomp filter sees the whole register: a rule that compares the full value can be
stepped around by setting high bits the kernel then ignores. Each probe below is paired with its plain form, so
a filter that denies nothing cannot pass.
"""

from __future__ import annotations

import errno
import platform
import subprocess
import sys

import pytest

from gateway.containment.seccomp import build_filter
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers of x86_64")

HIGH = 1 << 32
PROBE = """
import ctypes, os, sys
sys.path.insert(0, sys.argv[1])
from gateway.containment import inside
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.syscall.argtypes = [ctypes.c_long, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
r, w = os.pipe()
bpf = sys.stdin.buffer.read()
inside.no_new_privs()
inside.seccomp(bpf)
def errno_of(nr, *args):
    ctypes.set_errno(0)
    ret = libc.syscall(nr, *args)
    return 0 if ret >= 0 else ctypes.get_errno()
SYS_IOCTL, SYS_SOCKET = 16, 41
for request in (0x5412, 0x5412 | (1 << 32), 0x541C, 0x541C | (1 << 32)):  # TIOCSTI, TIOCLINUX
    print("ioctl", request, errno_of(SYS_IOCTL, r, request, 0))
for family in ([int(a) for a in sys.argv[2].split(",")] if sys.argv[2] else []):
    print("socket", family, errno_of(SYS_SOCKET, family, 1, 0))
"""


def probe(network: str, families: list[int]) -> dict[tuple[str, int], int]:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO), ",".join(map(str, families))],
        input=build_filter(network, True),
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr.decode()
    out = {}
    for line in r.stdout.decode().splitlines():
        call, arg, err = line.split()
        out[(call, int(arg))] = int(err)
    return out


@pytest.mark.parametrize("network", ["none", "allowlist", "host"])
def test_terminal_injection_ioctls_are_denied_whatever_the_high_bits(network: str) -> None:
    seen = probe(network, [])
    for request in (0x5412, 0x541C):
        assert seen[("ioctl", request)] == errno.EPERM
        assert seen[("ioctl", request | HIGH)] == errno.EPERM


@pytest.mark.parametrize("network", ["none", "allowlist", "host"])
def test_denied_socket_families_stay_denied_whatever_the_high_bits(network: str) -> None:
    af_packet, af_key, af_vsock, af_netlink = 17, 15, 40, 16
    denied = [af_packet, af_key, af_vsock] + ([af_netlink] if network != "host" else [])
    seen = probe(network, [f | extra for f in denied for extra in (0, HIGH)])
    for family in denied:
        assert seen[("socket", family)] == errno.EPERM
        assert seen[("socket", family | HIGH)] == errno.EPERM
