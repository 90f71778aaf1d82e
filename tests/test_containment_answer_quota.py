"""Containment limits as the agent meets them (issue 9, finding 8), through a real gateway and real bubblewrap:
the answer of a built-in tool is bounded as serialized, and a workspace cannot grow past its quota."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import KEYS, RunningGateway, default_config, free_port, mcp_client, start_gateway
from tests.test_containment_gateway import traversable_tmp
from tests.test_protocol_bad_input import headers, open_session, parse
from tests.test_resilience_upstream import allow_all_policy

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("bwrap"), reason="needs root and bubblewrap"),
]
OUTPUT = 65536
ANSWER = 2 * OUTPUT + 8192
QUOTA_MB = 4


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    work = traversable_tmp("mcpgw-quota-")
    port = free_port()
    upstreams = "".join(
        f'[[upstreams]]\nname = "{n}"\ntransport = "builtin"\ntools = "{t}"\ncontainment = "box"\n\n'
        for n, t in (("sh", "shell"), ("files", "files"))
    )
    extra = f"""
[containment]
workspace_root = "{work}/workspaces"
uid_base = 320000
uid_count = 50
max_output_bytes = {OUTPUT}
max_workspace_mb = {QUOTA_MB}

[containment.profiles.box]
tier = "sandbox"
read_only = ["/usr"]
read_write = ["{{workspace}}"]
env = {{ PATH = "/usr/bin:/bin" }}
memory_mb = 256
timeout_s = 60
cpu_seconds = 60
max_file_mb = 64
"""
    g = start_gateway(work, default_config(port, work, upstreams, extra, allow_all_policy(work)), port)
    yield g
    g.stop()
    assert not os.path.ismount(work / "workspaces" / "ci-bot")  # unmounted at stop; the image keeps the files
    shutil.rmtree(work, ignore_errors=True)


def raw_call(gw: RunningGateway, sid: str, tool: str, args: dict[str, Any]) -> httpx2.Response:
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": args}})
    return httpx2.post(
        gw.url, content=body, timeout=120, headers=headers("ci-bot", sid) | {"MCP-Protocol-Version": "2025-11-25"}
    )


@pytest.mark.parametrize(
    "command",
    [
        "head -c 50000000 /dev/zero",  # NUL: six bytes each in JSON
        "head -c 50000000 /dev/urandom",  # invalid UTF-8 and controls: U+FFFD, \\u escapes
        "head -c 30000000 /dev/urandom >&2; head -c 30000000 /dev/zero | tr '\\0' '\\1'",
    ],
)
def test_the_serialized_answer_is_bounded(gw: RunningGateway, command: str) -> None:
    sid = open_session(gw)
    r = raw_call(gw, sid, "sh__run", {"command": command})
    assert r.status_code == 200
    assert len(r.content) <= ANSWER + 1024, len(r.content)  # the HTTP body: JSON-RPC envelope and SSE framing
    result = parse(r)["result"]
    s = result["structuredContent"]
    assert s["exit_code"] == 0 and (s["stdout_truncated"] or s["stderr_truncated"])
    assert len(s["stdout"]) + len(s["stderr"]) > 1000  # positive control: output did come back, cut


def test_a_file_read_is_bounded_too(gw: RunningGateway) -> None:
    sid = open_session(gw)
    assert (
        parse(raw_call(gw, sid, "sh__run", {"command": "head -c 60000 /dev/zero > zeros"}))["result"][
            "structuredContent"
        ]["exit_code"]
        == 0
    )
    r = raw_call(gw, sid, "files__read_file", {"path": "zeros"})
    assert len(r.content) <= ANSWER + 1024, len(r.content)
    s = parse(r)["result"]["structuredContent"]
    assert s["truncated"] is True and 1000 < len(s["content"]) < 60000
    raw_call(gw, sid, "sh__run", {"command": "rm -f zeros"})


async def test_a_workspace_cannot_grow_past_its_quota(gw: RunningGateway) -> None:
    async with mcp_client(gw.url, KEYS["ci-bot"][2]) as c:
        one = await c.call_tool("sh__run", {"command": "head -c 20000000 /dev/zero > big; ls -l big"})
        s = one.structured_content
        assert s is not None and "No space left on device" in s["stderr"]
        assert s.get("workspace_full") is True and "max_workspace_mb" in one.content[0].text  # type: ignore[union-attr]
        many = await c.call_tool(
            "sh__run",
            {"command": "for i in 1 2 3 4 5 6 7 8; do head -c 1000000 /dev/zero > f$i; done; du -sk . | cut -f1"},
        )
        assert many.structured_content is not None
        used_kib = int(many.structured_content["stdout"].strip() or 0)
        assert used_kib <= QUOTA_MB * 1024, used_kib
        write = await c.call_tool("files__write_file", {"path": "more", "content": "x" * 60_000})
        assert write.is_error and "No space left on device" in write.content[0].text  # type: ignore[union-attr]
        assert "max_workspace_mb" in write.content[0].text  # type: ignore[union-attr]
        # Positive control: after removing files, the same write fits again.
        await c.call_tool("sh__run", {"command": "rm -f big f*"})
        ok = await c.call_tool("files__write_file", {"path": "more", "content": "x" * 60_000})
        assert not ok.is_error, ok.content
    # Another agent has its own quota: ci-bot's full workspace takes nothing from it.
    async with mcp_client(gw.url, KEYS["researcher"][2]) as c:
        other = await c.call_tool("sh__run", {"command": "head -c 3000000 /dev/zero > f && echo ok"})
        assert other.structured_content is not None and other.structured_content["stdout"] == "ok\n"
    assert os.path.ismount(gw.workdir / "workspaces" / "ci-bot")


async def test_a_quota_workspace_keeps_its_files_and_owner_across_a_restart() -> None:
    work = traversable_tmp("mcpgw-quota-restart-")
    port = free_port()
    extra = f"""
[containment]
workspace_root = "{work}/workspaces"
uid_base = 321000
uid_count = 50
max_workspace_mb = {QUOTA_MB}

[containment.profiles.box]
tier = "sandbox"
read_only = ["/usr"]
read_write = ["{{workspace}}"]
env = {{ PATH = "/usr/bin:/bin" }}
"""
    upstreams = '[[upstreams]]\nname = "sh"\ntransport = "builtin"\ntools = "shell"\ncontainment = "box"\n'
    config = default_config(port, work, upstreams, extra, allow_all_policy(work))
    try:
        for command, expected in (("echo kept > note; id -u", None), ("cat note; id -u", "kept\n")):
            g = start_gateway(work, config, port)
            try:
                if expected is None:  # another agent takes the first uid of the range first, this time only
                    async with mcp_client(g.url, KEYS["researcher"][2]) as c:
                        await c.call_tool("sh__run", {"command": "true"})
                async with mcp_client(g.url, KEYS["ci-bot"][2]) as c:
                    r = await c.call_tool("sh__run", {"command": command})
            finally:
                g.stop()
            s = r.structured_content
            assert s is not None and s["exit_code"] == 0, s
            if expected is None:
                uid = s["stdout"].strip()
            else:
                assert s["stdout"] == expected + uid + "\n"  # the same file, read by the same uid
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_quota_that_cannot_be_enforced_is_refused(tmp_path: Path) -> None:
    from gateway.containment.workspaces import WorkspaceError, Workspaces

    with pytest.raises(WorkspaceError, match=r"max_workspace_mb cannot be enforced here.*does not run as root"):
        Workspaces(tmp_path / "ws", 322000, 10, as_root=False, quota_mb=4)
    Workspaces(tmp_path / "ws", 322000, 10, as_root=False)  # control: no quota, no refusal
