"""Contained workers through a real gateway process, with the real MCP SDK client and real bubblewrap.

The gateway runs as whoever runs the tests (root in CI): these tests check that workers drop to their own
uid, that agents never share a uid, workspace or worker, that limits stop a worker with an error naming the
limit and the pool recovers, and that the policy's narrowing applies and never widens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import KEYS, REPO, RunningGateway, default_config, free_port, mcp_client, start_gateway

pytestmark = pytest.mark.anyio

UID_BASE = 310000
BOX = f'command = ["/usr/bin/python3", "{REPO}/conformance/containment/box_server.py"]'
TOKEN = "tbox-token-" + os.urandom(6).hex()
"""A secret handed to a contained upstream through its env: it must reach the worker and no host command line."""
LIMITS = "memory_mb = 128\npids = 32\ncpu_seconds = 1\ntimeout_s = 3\nmax_file_mb = 8\nopen_files = 128"
MXC = {
    "version": "0.8.0-alpha",
    "containment": "bubblewrap",
    "filesystem": {"readwritePaths": ["{workspace}"], "readonlyPaths": ["/usr"], "deniedPaths": ["{workspace}/vault"]},
    "network": {"allowedHosts": []},
    "process": {"env": ["PATH=/usr/bin:/bin", "FROM_MXC=yes"], "timeout": 2000},
    "ui": {"clipboard": "none"},
}


def traversable_tmp(prefix: str) -> Path:
    """A work directory worker uids can walk into (pytest's own tmp_path is mode 0700)."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(work, 0o711)
    return work


def config(port: int, work: Path, idle: float = 3.0, helper: str = "/usr/bin/python3") -> str:
    (work / "profile.mxc.json").write_text(json.dumps(MXC))
    shared = work / "shared"  # a read-only tree whose denied entry is a symlink to the real directory
    (shared / "real-keys").mkdir(parents=True, exist_ok=True)
    (shared / "real-keys" / "key").write_text("LINKED-SECRET\n")
    if not (shared / "keys").is_symlink():
        (shared / "keys").symlink_to("real-keys")
    for d in (shared, shared / "real-keys"):
        os.chmod(d, 0o755)
    os.chmod(shared / "real-keys" / "key", 0o644)
    upstreams = f"""
[[upstreams]]
name = "sh"
transport = "builtin"
tools = "shell"
containment = "strict"

[[upstreams]]
name = "files"
transport = "builtin"
tools = "files"
containment = "strict"

[[upstreams]]
name = "box"
transport = "stdio"
{BOX}
containment = "boxed"

[[upstreams]]
name = "tbox"
transport = "stdio"
{BOX}
env = {{ BOX_TOKEN = "{TOKEN}" }}
containment = "boxed"

[[upstreams]]
name = "lsh"
transport = "builtin"
tools = "shell"
containment = "linked"

[[upstreams]]
name = "tsh"
transport = "builtin"
tools = "shell"
containment = "tooled"

[[upstreams]]
name = "psh"
transport = "builtin"
tools = "shell"
containment = "proc"

[[upstreams]]
name = "msh"
transport = "builtin"
tools = "shell"
containment = "mxc"
"""
    return default_config(
        port,
        work,
        upstreams,
        extra=f"""
[containment]
workspace_root = "{work}/workspaces"
uid_base = {UID_BASE}
uid_count = 100
idle_timeout_s = {idle}
helper_python = "{helper}"

[containment.profiles.strict]
tier = "sandbox"
read_only = ["/usr"]
read_write = ["{{workspace}}"]
deny = ["{{workspace}}/.secrets"]
env = {{ PATH = "/usr/bin:/bin", HOME = "{{workspace}}" }}
{LIMITS}

[containment.profiles.tiny]
tier = "sandbox"
read_only = ["/usr"]
read_write = ["{{workspace}}"]
deny = ["{{workspace}}/.secrets"]
memory_mb = 64
pids = 16
cpu_seconds = 1
timeout_s = 3
max_file_mb = 1
open_files = 64

[containment.profiles.loose]
tier = "sandbox"
read_only = ["/usr", "/etc"]
read_write = ["{{workspace}}"]
memory_mb = 1024

[containment.profiles.boxed]
tier = "sandbox"
read_only = ["/usr", "{REPO}/conformance/containment"]
read_write = ["{{workspace}}"]
env = {{ PATH = "/usr/bin:/bin" }}
{LIMITS}

[containment.profiles.linked]
tier = "sandbox"
read_only = ["/usr", "{work}/shared"]
read_write = ["{{workspace}}"]
deny = ["{work}/shared/keys"]
{LIMITS}

[containment.profiles.tooled]
tier = "sandbox"
read_only = ["/usr", "{{workspace}}/tools"]
read_write = ["{{workspace}}/out"]
{LIMITS}

[containment.profiles.proc]
tier = "process"
network = "host"
read_write = ["{{workspace}}"]
env = {{ PATH = "/usr/bin:/bin" }}
{LIMITS}

[containment.profiles.mxc]
mxc_policy = "profile.mxc.json"
memory_mb = 128
""",
        policy=REPO / "tests" / "containment_policy",
    )


@pytest.fixture(scope="module")
def cgw() -> Iterator[RunningGateway]:
    work = traversable_tmp("containment-gw.")
    port = free_port()
    gw = start_gateway(work, config(port, work), port)
    yield gw
    gw.stop()
    shutil.rmtree(work, ignore_errors=True)


async def run(gw: RunningGateway, agent: str, tool: str, args: dict[str, Any]) -> Any:
    async with mcp_client(gw.url, KEYS[agent][2]) as c:
        return await c.call_tool(tool, args)


def text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def metric(gw: RunningGateway, name: str, *labels: str) -> float:
    total = 0.0
    for line in httpx2.get(gw.admin_base + "/metrics").text.splitlines():
        if line.startswith(name + "{") and all(label in line for label in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


def outcome(gw: RunningGateway, tool: str) -> dict[str, Any]:
    """The audit outcome of the latest call of ``tool``."""
    records = gw.audit_records()
    ids = [r["decision_id"] for r in records if r.get("type") == "decision" and r.get("tool") == tool]
    for r in reversed(records):
        if r.get("type") == "outcome" and r.get("decision_id") == ids[-1]:
            return r
    raise AssertionError(f"no outcome for {tool}")


async def test_readyz_reports_what_this_host_enforces(cgw: RunningGateway) -> None:
    ready = httpx2.get(cgw.admin_base + "/readyz").json()
    c = ready["containment"]
    prot = c["protections"]
    assert prot["bubblewrap"] is True and prot["seccomp"] is True and prot["landlock_abi"] >= 1
    assert prot["per_agent_uid"] is (os.geteuid() == 0)
    assert prot["memory_limit"] in ("cgroup", "rlimit (address space)")
    assert c["profiles"]["strict"]["enforceable"] is True
    assert any("clipboard" in n for n in c["profiles"]["mxc"]["unsupported"])
    log = cgw.log.read_text()
    assert "containment protections on this host:" in log
    assert "containment profile 'mxc' (mxc:profile.mxc.json): not enforced: ui:" in log


async def test_shell_call_runs_as_the_agents_own_uid_in_its_workspace(cgw: RunningGateway) -> None:
    r = await run(cgw, "ci-bot", "sh__run", {"command": "id -u; pwd; env; cat /etc/shadow"})
    s = r.structured_content
    lines = s["stdout"].split("\n")
    uid = int(lines[0])
    assert uid != os.geteuid() and (os.geteuid() != 0 or UID_BASE <= uid < UID_BASE + 100)
    assert lines[1] == str(cgw.workdir / "workspaces" / "ci-bot")
    assert "No such file or directory" in s["stderr"] and s["exit_code"] == 1
    assert sorted(x.split("=")[0] for x in lines[2:] if "=" in x) == ["HOME", "PATH", "PWD"]
    assert not r.is_error
    out = outcome(cgw, "run")
    assert out["containment"]["tier"] == "sandbox" and out["containment"]["profile"] == "strict"
    assert out["containment"]["worker"].startswith("w")


async def test_agents_share_no_uid_workspace_or_worker(cgw: RunningGateway) -> None:
    a = await run(cgw, "ci-bot", "sh__run", {"command": "id -u; echo mine > note.txt"})
    b = await run(
        cgw,
        "admin",
        "sh__run",
        {"command": "id -u; cat ../ci-bot/note.txt " + str(cgw.workdir) + "/workspaces/ci-bot/note.txt; ls /tmp"},
    )
    assert a.structured_content["stdout"].split()[0] != b.structured_content["stdout"].split()[0]
    assert "mine" not in b.structured_content["stdout"]
    wa = await run(cgw, "ci-bot", "box__whoami", {})
    wb = await run(cgw, "admin", "box__whoami", {})
    ia, ib = wa.structured_content, wb.structured_content
    assert ia["uid"] != ib["uid"] and ia["instance"] != ib["instance"] and ia["cwd"] != ib["cwd"]


async def test_files_tools_stay_within_the_grants(cgw: RunningGateway) -> None:
    ws = cgw.workdir / "workspaces" / "ci-bot"
    w = await run(
        cgw, "ci-bot", "files__write_file", {"path": "docs/a.txt", "content": "alpha\nbeta\n", "create_dirs": True}
    )
    assert not w.is_error and w.structured_content["bytes_written"] == 11
    assert (await run(cgw, "ci-bot", "files__read_file", {"path": "docs/a.txt"})).content[0].text == "alpha\nbeta\n"
    listing = await run(cgw, "ci-bot", "files__list_dir", {"path": "docs"})
    assert [e["name"] for e in listing.structured_content["entries"]] == ["a.txt"]
    found = await run(cgw, "ci-bot", "files__search", {"path": ".", "pattern": "^be"})
    assert found.structured_content["matches"] == [{"path": "./docs/a.txt", "line": 2, "text": "beta"}]
    st = await run(cgw, "ci-bot", "files__stat", {"path": "docs/a.txt"})
    assert st.structured_content["type"] == "file" and st.structured_content["size"] == 11
    assert (ws / "docs" / "a.txt").stat().st_uid != os.geteuid() or os.geteuid() != 0
    for path in ("/etc/shadow", "../admin/note.txt", "/root", str(cgw.workdir / "gateway.toml")):
        r = await run(cgw, "ci-bot", "files__read_file", {"path": path})
        assert r.is_error and "No such file or directory" in text(r), (path, text(r))
    bad = await run(cgw, "ci-bot", "files__write_file", {"path": "/usr/evil", "content": "x"})
    assert bad.is_error and "Read-only file system" in text(bad)
    # a denied path inside the workspace: readable by the agent's uid on the host, masked in the worker
    (ws / ".secrets").mkdir(exist_ok=True)
    (ws / ".secrets" / "key").write_text("TOP-SECRET")
    uid = ws.stat().st_uid
    for p in (ws / ".secrets", ws / ".secrets" / "key"):
        os.chown(p, uid, uid)
    masked = await run(cgw, "ci-bot", "files__read_file", {"path": ".secrets/key"})
    assert masked.is_error and "Permission denied" in text(masked) and "TOP-SECRET" not in text(masked)


async def test_stdio_worker_is_reused_then_restarted_after_a_crash(cgw: RunningGateway) -> None:
    async with mcp_client(cgw.url, KEYS["ci-bot"][2]) as c:
        first = (await c.call_tool("box__whoami", {})).structured_content["instance"]
        assert (await c.call_tool("box__whoami", {})).structured_content["instance"] == first
        crashes = metric(cgw, "mcp_gateway_worker_kills_total", 'server="box"', 'reason="crash"')
        dead = await c.call_tool("box__run", {"command": "kill -9 $PPID"})
        assert dead.is_error and "exited unexpectedly" in text(dead)
        again = (await c.call_tool("box__whoami", {})).structured_content["instance"]
        assert again != first
    assert metric(cgw, "mcp_gateway_worker_kills_total", 'server="box"', 'reason="crash"') == crashes + 1


@pytest.mark.parametrize(
    ("tool", "args", "limit", "reason"),
    [
        (
            "box__run",
            {"command": "python3 -c 'x = bytearray(1 << 30)'"},
            "memory limit reached (memory_mb = 128)",
            "memory",
        ),
        ("box__run", {"command": "while :; do :; done"}, "CPU time limit reached (cpu_seconds = 1)", "cpu"),
        ("box__run", {"command": "b() { b | b & }; b; sleep 10"}, "process limit reached (pids = 32)", "pids"),
        ("box__sleep", {"seconds": 60}, "time limit reached (timeout_s = 3)", "timeout"),
        (
            "sh__run",
            {"command": "python3 -c 'x = bytearray(1 << 30)'"},
            "memory limit reached (memory_mb = 128)",
            "memory",
        ),
        ("sh__run", {"command": "sleep 60", "timeout_s": 1}, "time limit reached (timeout_s = 1)", "timeout"),
    ],
)
async def test_a_limit_stops_the_worker_names_the_limit_and_the_pool_recovers(
    cgw: RunningGateway, tool: str, args: dict[str, Any], limit: str, reason: str
) -> None:
    server = tool.split("__")[0]
    before = metric(cgw, "mcp_gateway_worker_kills_total", f'server="{server}"', f'reason="{reason}"')
    r = await run(cgw, "ci-bot", tool, args)
    assert r.is_error and limit in text(r), text(r)
    assert metric(cgw, "mcp_gateway_worker_kills_total", f'server="{server}"', f'reason="{reason}"') == before + 1
    assert outcome(cgw, tool.split("__")[1])["containment"]["killed"] == reason
    after = await run(
        cgw,
        "ci-bot",
        "box__echo" if server == "box" else "sh__run",
        {"text": "ok"} if server == "box" else {"command": "echo ok"},
    )
    assert not after.is_error and "ok" in text(after)


async def test_idle_workers_are_reaped(cgw: RunningGateway) -> None:
    await run(cgw, "researcher", "box__whoami", {})
    assert metric(cgw, "mcp_gateway_workers", 'server="box"') >= 1
    deadline = time.monotonic() + 30
    while metric(cgw, "mcp_gateway_workers", 'server="box"') > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(cgw, "mcp_gateway_workers", 'server="box"') == 0
    assert "idle for" in cgw.log.read_text()


async def test_policy_narrowing_applies_and_never_widens(cgw: RunningGateway) -> None:
    # team research: read-only workspace, no network (narrowed by the test policy)
    ro = await run(cgw, "researcher", "sh__run", {"command": "echo x > f.txt"})
    assert ro.structured_content["exit_code"] != 0 and "Read-only file system" in ro.structured_content["stderr"]
    assert outcome(cgw, "run")["containment"]["narrowed"] is True
    # a narrowing that asks for more than the profile is clamped to it: the memory limit still holds
    wide = await run(cgw, "ci-bot", "sh__run", {"command": "echo WIDEN; python3 -c 'x = bytearray(1 << 30)'"})
    assert wide.is_error and "memory limit reached (memory_mb = 128)" in text(wide)
    assert outcome(cgw, "run")["containment"]["narrowed"] is False
    # another profile, if it is narrower
    tiny = await run(cgw, "ci-bot", "sh__run", {"command": "echo TINY; head -c 2000000 /dev/zero > big; ls -l big"})
    assert "File too large" in tiny.structured_content["stderr"]
    assert outcome(cgw, "run")["containment"]["profile"] == "strict>tiny"
    # a narrowing that cannot be applied refuses the call (fail closed), with the reason
    for word, expected in (("LOOSE", "'loose' is not narrower than 'strict'"), ("BADKEY", "unknown containment key")):
        async with mcp_client(cgw.url, KEYS["ci-bot"][2]) as c:
            with pytest.raises(MCPError, match=expected):
                await c.call_tool("sh__run", {"command": f"echo {word}"})
        assert outcome(cgw, "run")["error_kind"] == "containment"


async def test_process_tier_drops_privileges_without_a_sandbox(cgw: RunningGateway) -> None:
    r = await run(
        cgw,
        "ci-bot",
        "psh__run",
        {
            "command": "id -u; grep NoNewPrivs /proc/self/status; cat /etc/shadow; "
            "setsid sleep 300 >/dev/null 2>&1 & echo started"
        },
    )
    s = r.structured_content
    assert int(s["stdout"].split()[0]) != os.geteuid()
    assert "NoNewPrivs:\t1" in s["stdout"] and "Permission denied" in s["stderr"]
    assert outcome(cgw, "run")["containment"]["tier"] == "process"
    # the process it left behind went with the worker (cgroup), even though it left the process group
    left = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == "sleep 300"]
    assert left == []


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


async def test_a_profile_loaded_from_mxc_governs_the_worker(cgw: RunningGateway) -> None:
    ws = cgw.workdir / "workspaces" / "ci-bot"
    vault = ws / "vault"
    vault.mkdir(exist_ok=True)
    (vault / "k").write_text("VAULT")
    os.chown(vault, ws.stat().st_uid, ws.stat().st_uid)
    r = await run(cgw, "ci-bot", "msh__run", {"command": "echo $FROM_MXC; cat vault/k; sleep 30"})
    assert r.is_error and "time limit reached (timeout_s = 2)" in text(r)
    assert "yes" in r.structured_content["stdout"] and "VAULT" not in r.structured_content["stdout"]


async def test_a_profile_this_host_cannot_enforce_refuses_to_start_workers() -> None:
    work = traversable_tmp("containment-refuse.")
    port = free_port()
    gw = start_gateway(work, config(port, work, helper="/nonexistent/python3"), port, wait_ready=False)
    try:
        deadline = time.monotonic() + 30
        ready: dict[str, Any] = {}
        while time.monotonic() < deadline:
            ready = httpx2.get(gw.admin_base + "/readyz").json()
            if "upstreams" in ready and ready["upstreams"]["psh"]["up"]:
                break
            time.sleep(0.1)
        assert ready["ready"] is False
        assert "helper_python" in " ".join(ready["containment"]["profiles"]["strict"]["missing"])
        assert ready["upstreams"]["sh"]["up"] is False and "cannot be enforced" in ready["upstreams"]["sh"]["error"]
        assert ready["upstreams"]["psh"]["up"] is True  # the process tier needs no helper
        r = await run(gw, "ci-bot", "psh__run", {"command": "echo fine"})
        assert "fine" in text(r)
        assert "cannot be enforced here" in gw.log.read_text()
    finally:
        gw.stop()
        shutil.rmtree(work, ignore_errors=True)


async def test_bubblewrap_itself_starts_with_an_empty_environment(cgw: RunningGateway) -> None:
    """bwrap is pid 1 of the sandbox: whatever it inherited would be readable as /proc/1/environ."""
    who = (await run(cgw, "admin", "box__whoami", {})).structured_content
    found: dict[str, list[bytes]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != who["uid"]:
                continue
            cmd = _cmdline(pid)
            found.setdefault(cmd.split(" ")[0].rsplit("/", 1)[-1], []).append(Path(f"/proc/{pid}/environ").read_bytes())
        except OSError:
            continue
    assert found.get("bwrap") == [b"", b""]  # the outer bwrap and the sandbox's pid 1 alike
    assert found.get("python3") == [b"PATH=/usr/bin:/bin\0"]  # the server: the profile's env only


async def test_shell_output_is_truncated_and_cwd_stays_within_the_grants(cgw: RunningGateway) -> None:
    big = await run(
        cgw, "ci-bot", "sh__run", {"command": "head -c 200000 /dev/zero | tr '\\0' a; echo err >&2", "stdin": "ignored"}
    )
    s = big.structured_content
    assert s["stdout_truncated"] is True and len(s["stdout"]) == 65536 and s["stderr"] == "err\n"
    sub = await run(cgw, "ci-bot", "sh__run", {"command": "mkdir -p sub && cd sub && pwd"})
    assert sub.structured_content["stdout"].strip().endswith("/ci-bot/sub")
    inside = await run(cgw, "ci-bot", "sh__run", {"command": "pwd; cat", "cwd": "sub", "stdin": "from stdin"})
    assert inside.structured_content["stdout"].endswith("/ci-bot/sub\nfrom stdin")
    other = str(cgw.workdir / "workspaces" / "admin")
    outside = await run(cgw, "ci-bot", "sh__run", {"command": "pwd", "cwd": other})
    assert outside.is_error and f"cannot change to {other}" in outside.structured_content["stderr"]


async def test_a_workers_secrets_are_on_no_host_command_line(cgw: RunningGateway) -> None:
    """Host command lines are world-readable (``ps``): the worker's environment must not travel through argv."""
    # The worker prints a digest of what it got: the token itself in a result would be redacted by secret scanning.
    r = await run(cgw, "researcher", "tbox__run", {"command": 'printf %s "$BOX_TOKEN" | sha256sum; sleep 1'})
    delivered = hashlib.sha256(TOKEN.encode()).hexdigest()
    assert r.structured_content["stdout"].split()[0] == delivered  # delivered to the worker (it is still running)
    assert [p for p in os.listdir("/proc") if p.isdigit() and TOKEN in _cmdline(p)] == []


async def test_a_denied_symlink_masks_what_it_points_to(cgw: RunningGateway) -> None:
    shared = cgw.workdir / "shared"
    r = await run(cgw, "ci-bot", "lsh__run", {"command": f"ls {shared}; cat {shared}/keys/key {shared}/real-keys/key"})
    s = r.structured_content
    assert s["stdout"].split() == ["keys", "real-keys"]  # the read-only tree is there
    assert "LINKED-SECRET" not in s["stdout"] + s["stderr"] and s["exit_code"] != 0


async def test_links_an_agent_plants_in_its_workspace_mount_nothing_of_the_host(cgw: RunningGateway) -> None:
    """Paths granted below a workspace are the agent's to replace: a link there must not become a bind source
    (bwrap would mount whatever the link names and the worker's uid may open: the host's /, its /tmp)."""
    marker = cgw.workdir / "host-only"
    marker.write_text("HOST-ONLY\n")
    os.chmod(marker, 0o644)
    ws = cgw.workdir / "workspaces" / "ci-bot"
    plant = await run(cgw, "ci-bot", "sh__run", {"command": "rm -rf tools out; ln -s / tools; ln -s /tmp out; ls -l"})
    assert "tools -> /" in plant.structured_content["stdout"]
    host_tmp = f"/tmp/planted-{os.urandom(4).hex()}"
    probe = f"cat {ws}/tools{marker}; touch {ws}/out/{host_tmp[5:]} && echo wrote"
    r = await run(cgw, "ci-bot", "tsh__run", {"command": probe})
    s = r.structured_content
    assert "HOST-ONLY" not in s["stdout"] and "wrote" not in s["stdout"] and s["exit_code"] != 0, s
    assert not os.path.exists(host_tmp)
    await run(cgw, "ci-bot", "sh__run", {"command": "rm -f tools out; mkdir tools out"})


async def test_bad_tool_arguments_get_clear_errors(cgw: RunningGateway) -> None:
    cases = [
        ("files__read_file", {"path": "a.txt", "max_bytes": -5}, "argument 'max_bytes' must be at least 1"),
        ("files__read_file", {"path": "a.txt", "offset": -1}, "argument 'offset' must be at least 0"),
        ("files__search", {"path": ".", "pattern": "x", "max_results": 0}, "argument 'max_results' must be at least 1"),
        ("files__stat", {"path": "a", "follow": True}, "unknown argument(s): 'follow'"),
        ("sh__run", {"command": "true", "env": {}}, "unknown argument(s): 'env'"),
        ("sh__run", {"command": "true", "timeout_s": "soon"}, "argument 'timeout_s' has the wrong type"),
    ]
    async with mcp_client(cgw.url, KEYS["ci-bot"][2]) as c:
        for tool, args, expected in cases:
            with pytest.raises(MCPError) as err:
                await c.call_tool(tool, args)
            assert expected in str(err.value), (tool, args, str(err.value))
        bad_regex = await c.call_tool("files__search", {"path": ".", "pattern": "("})
        assert bad_regex.is_error and "bad request: missing )" in text(bad_regex)
