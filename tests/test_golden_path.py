"""The golden path: the shipped files as a user meets them (issue 11).

The README's demo configuration (gateway.toml) and examples/contained.toml, with the shipped rego/, started as
the README starts them (``python -m gateway serve --config ...`` from the repository root; a copy of the config
differs only in its ports, in the audit log and workspace locations, and in relative paths made absolute because
the copy lives elsewhere), driven by the real SDK client with each documented demo key through every outcome the
docs promise: allowed, denied with its reason, hidden, contained, refused egress. A change to the shipped policy,
the examples or the README that breaks what a user reads fails here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import REPO, RunningGateway, free_port, mcp_client, start_gateway

pytestmark = pytest.mark.anyio

README = (REPO / "README.md").read_text()


def demo_keys() -> dict[str, tuple[str, str, list[str]]]:
    """The README's demo key table: key -> (agent, team, roles)."""
    rows = re.findall(r"^\| `(demo-[a-z-]+-key)` \| `([^`]+)` \| `([^`]+)` \| ([^|]*)\|$", README, re.M)
    return {k: (agent, team, re.findall(r"`([^`]+)`", roles)) for k, agent, team, roles in rows}


KEYS = demo_keys()
CI, ADMIN, RESEARCH = "demo-ci-bot-key", "demo-admin-key", "demo-research-key"


def replace(text: str, old: str, new: str) -> str:
    """A literal replacement that must happen: when the shipped file changes, this says what to update."""
    assert old in text, f"the shipped config no longer has {old!r}"
    return text.replace(old, new)


def text_of(r: Any) -> str:
    return "".join(getattr(c, "text", "") for c in r.content)


def ports(text: str, listen: str, admin: str) -> tuple[str, int]:
    port = free_port()
    text = replace(text, f'listen = "{listen}"', f'listen = "127.0.0.1:{port}"')
    text = replace(text, f'admin_listen = "{admin}"', f'admin_listen = "127.0.0.1:{free_port()}"')
    return text, port


def test_the_readme_lists_the_demo_keys() -> None:
    assert KEYS == {
        CI: ("ci-bot", "platform", ["ci"]),
        ADMIN: ("platform-admin", "platform", ["admin"]),
        RESEARCH: ("research-agent", "research", []),
    }


# --- the demo gateway (gateway.toml) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    work = tmp_path_factory.mktemp("golden-demo")
    text, port = ports((REPO / "gateway.toml").read_text(), "127.0.0.1:8080", "127.0.0.1:9464")
    text = replace(text, 'path = "rego"', f'path = "{REPO / "rego"}"')
    text = replace(text, 'path = "var/audit.jsonl"', f'path = "{work / "audit.jsonl"}"')
    gw = start_gateway(work, text, port)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository under /tmp/ (the shipped policy's repo_root for git)."""
    path = tmp_path_factory.mktemp("golden-repo")
    assert str(path).startswith("/tmp/")
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    subprocess.run(["git", "init", "-q", str(path)], check=True, env=env)
    (path / "README").write_text("hello\n")
    subprocess.run(["git", "-C", str(path), "add", "README"], check=True, env=env)
    subprocess.run(["git", "-C", str(path), "commit", "-q", "-m", "first commit"], check=True, env=env)
    return path


def test_the_readme_python_example_runs_as_written(demo: RunningGateway) -> None:
    """The quick start's SDK snippet, verbatim but for the port."""
    code = re.search(r"```python\n(.*?)```", README, re.S)
    assert code is not None
    src = replace(code.group(1), "http://127.0.0.1:8080/mcp", demo.url)
    r = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()[:2]
    assert "'time__get_current_time'" in first and "'git__git_status'" in first
    assert "isError=False" in second.replace(" ", "") or "is_error=False" in second.replace(" ", ""), second
    assert '"timezone": "UTC"' in second or "UTC" in second


def test_the_readme_metrics_and_audit_lines(demo: RunningGateway) -> None:
    """`curl -s 127.0.0.1:9464/metrics | grep mcp_gateway_tool_calls_total` and `tail var/audit.jsonl`."""
    assert "curl -s 127.0.0.1:9464/metrics | grep mcp_gateway_tool_calls_total" in README
    metrics = httpx2.get(demo.admin_base + "/metrics", timeout=10).text
    assert "mcp_gateway_tool_calls_total" in metrics
    assert httpx2.get(demo.base + "/metrics", timeout=10).status_code == 404  # not on the agents' port
    assert demo.audit_records(), "the audit log has records"


async def test_ci_bot_on_the_demo(demo: RunningGateway, repo: Path) -> None:
    async with mcp_client(demo.url, CI) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        # allowed: the time tools and read-only git; hidden: git's writes
        assert {"time__get_current_time", "time__convert_time", "git__git_status", "git__git_log"} <= names
        assert not names & {"git__git_commit", "git__git_add", "git__git_reset", "git__git_checkout"}

        now = await c.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert not now.is_error and "UTC" in text_of(now)
        ok = await c.call_tool(
            "time__convert_time", {"source_timezone": "Europe/Paris", "time": "12:00", "target_timezone": "UTC"}
        )
        assert not ok.is_error, text_of(ok)
        status = await c.call_tool("git__git_status", {"repo_path": str(repo)})
        assert not status.is_error, text_of(status)
        log = await c.call_tool("git__git_log", {"repo_path": str(repo)})
        assert "first commit" in text_of(log)

        # denied, with the reason the docs print (docs/policy.md, policy eval)
        bad = await c.call_tool(
            "time__convert_time", {"source_timezone": "Mars/Base", "time": "10:00", "target_timezone": "UTC"}
        )
        assert bad.is_error and "timezone Mars/Base is not in the team's list" in text_of(bad)
        assert "decision id" in text_of(bad)
        outside = await c.call_tool("git__git_status", {"repo_path": "/etc"})
        assert outside.is_error and "repo_path /etc is outside /tmp/" in text_of(outside)

        # hidden == missing
        with pytest.raises(MCPError) as hidden:
            await c.call_tool("git__git_commit", {"repo_path": str(repo), "message": "x"})
        with pytest.raises(MCPError) as missing:
            await c.call_tool("git__no_such_tool", {})
        assert hidden.value.code == missing.value.code
        assert hidden.value.message.replace("git__git_commit", "X") == missing.value.message.replace(
            "git__no_such_tool", "X"
        )
    denial = [
        r
        for r in demo.audit_records()
        if r.get("type") == "decision" and r.get("agent") == "ci-bot" and not r.get("allow")
    ]
    assert any("timezone Mars/Base is not in the team's list" in r.get("reasons", []) for r in denial), denial[-3:]


async def test_admin_and_research_on_the_demo(demo: RunningGateway, repo: Path) -> None:
    async with mcp_client(demo.url, ADMIN) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert {"git__git_commit", "git__git_add", "time__convert_time"} <= names  # admin gets everything
        ok = await c.call_tool("git__git_log", {"repo_path": str(repo)})
        assert not ok.is_error
    async with mcp_client(demo.url, RESEARCH) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert names == {"time__get_current_time", "time__convert_time"}, names  # no git at all
        now = await c.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert not now.is_error
        # listed, so the denial can say why
        no = await c.call_tool(
            "time__convert_time", {"source_timezone": "UTC", "time": "10:00", "target_timezone": "UTC"}
        )
        assert no.is_error and "research agents may not use convert_time" in text_of(no)
    with pytest.raises(BaseException) as refused:  # the SDK's task groups wrap it
        async with mcp_client(demo.url, "not-a-demo-key") as bad:
            await bad.list_tools()
    assert "invalid API key" in "".join(traceback.format_exception(refused.value))
    r = httpx2.post(
        demo.url,
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={"Authorization": "Bearer wrong", "Accept": "application/json, text/event-stream"},
    )
    assert r.status_code == 401


# --- the contained example (examples/contained.toml) ---------------------------------------------------------

NODE_MODULES = REPO / "tests" / "npm" / "node_modules" / "@modelcontextprotocol" / "server-filesystem"


@pytest.fixture(scope="module")
def contained() -> Iterator[RunningGateway]:
    if os.geteuid() != 0 or not shutil.which("bwrap"):
        pytest.skip("the contained example needs root and bubblewrap")
    work = Path(tempfile.mkdtemp(prefix="golden-contained.", dir="/tmp"))
    os.chmod(work, 0o711)  # worker uids must reach their workspaces
    text, port = ports((REPO / "examples" / "contained.toml").read_text(), "127.0.0.1:8081", "127.0.0.1:9465")
    text = replace(text, 'path = "../var/audit-contained.jsonl"', f'path = "{work / "audit.jsonl"}"')
    text = replace(text, 'workspace_root = "../var/workspaces"', f'workspace_root = "{work / "workspaces"}"')
    text = replace(text, '"contained.mxc.json"', f'"{REPO / "examples" / "contained.mxc.json"}"')
    text = text.replace('"../', f'"{REPO}/')  # the rest is relative to examples/: the same files
    gw = start_gateway(work, text, port, wait_ready=NODE_MODULES.exists())
    yield gw
    gw.stop()
    shutil.rmtree(work, ignore_errors=True)


async def run(c: Any, command: str) -> Any:
    return await c.call_tool("sh__run", {"command": command})


def readyz(gw: RunningGateway) -> dict[str, Any]:
    return dict(httpx2.get(gw.admin_base + "/readyz", timeout=10).json())


async def test_contained_tools_listed_per_role(contained: RunningGateway) -> None:
    async with mcp_client(contained.url, CI) as c:
        names = {t.name for t in (await c.list_tools()).tools}
    assert names == {
        "sh__run",
        "files__read_file",
        "files__list_dir",
        "files__search",
        "files__stat",
        "files__write_file",
    }, names  # fs is granted to no role of the shipped policy: hidden
    async with mcp_client(contained.url, ADMIN) as c:
        admin = {t.name for t in (await c.list_tools()).tools}
    assert names <= admin and not any(n.startswith("fs__") for n in admin)
    ups = readyz(contained)["upstreams"]
    assert ups["sh"]["up"] and ups["files"]["up"]
    if not NODE_MODULES.exists():  # the README: without npm ci the rest is served and /readyz says why
        assert not ups["fs"]["up"] and "cannot change to" in ups["fs"]["error"]


async def test_ci_bot_runs_allow_listed_commands_contained(contained: RunningGateway) -> None:
    ws = contained.workdir / "workspaces" / "ci-bot"
    async with mcp_client(contained.url, CI) as c:
        ok = await run(c, "ls -la")  # allowed (the issue: the destructive rule denied every CI command)
        assert not ok.is_error and ok.structured_content["exit_code"] == 0, text_of(ok)
        echo = await run(c, "echo hello from the sandbox")
        assert echo.structured_content["stdout"].strip() == "hello from the sandbox"
        # contained: the host's /etc and /root are not there; no network (narrowed by the policy)
        shadow = await run(c, "cat /etc/shadow")
        assert shadow.structured_content["exit_code"] != 0 and "No such file" in shadow.structured_content["stderr"]
        home = await run(c, "ls /root")
        assert home.structured_content["exit_code"] != 0

        # files: writes under the build directories, reads in the workspace
        w = await c.call_tool("files__write_file", {"path": "build/out.txt", "content": "built", "create_dirs": True})
        assert not w.is_error, text_of(w)
        assert (ws / "build" / "out.txt").read_text() == "built"
        r = await c.call_tool("files__read_file", {"path": "build/out.txt"})
        assert not r.is_error and "built" in text_of(r)

    outcomes = [
        r
        for r in contained.audit_records()
        if r.get("type") == "outcome" and r.get("agent") == "ci-bot" and r.get("containment")
    ]
    assert outcomes and all(o["containment"]["tier"] == "sandbox" for o in outcomes)
    assert any(o["containment"]["profile"] == "web" and o["containment"]["narrowed"] for o in outcomes), outcomes[-2:]


async def test_ci_bot_is_denied_with_the_documented_reasons(contained: RunningGateway) -> None:
    ws = contained.workdir / "workspaces" / "ci-bot"
    async with mcp_client(contained.url, CI) as c:
        for command, reason in [
            ("rm -rf /", "command rm is not in the allow-list of your roles"),
            ("ls; cat /etc/passwd", "command uses shell operators"),
            ("git push", "git may only run as: git diff | log | rev-parse | show | status (not git push)"),
            ("make deploy", "make may only run as: make build | lint | test (not make deploy)"),
            ("curl https://example.com", "command curl is not in the allow-list of your roles"),
        ]:
            denied = await run(c, command)
            assert denied.is_error and reason in text_of(denied), (command, text_of(denied))
        for tool, args, reason in [
            (
                "files__write_file",
                {"path": "src/x.py", "content": "x"},
                "path src/x.py is not writable (writable: build/**, dist/**, tmp/**)",
            ),
            ("files__read_file", {"path": ".secrets/token"}, "path .secrets/token is protected"),
            ("files__read_file", {"path": "../admin/x"}, "path ../admin/x is outside the workspace"),
            ("files__read_file", {"path": "/etc/passwd"}, "path /etc/passwd is outside the workspace"),
        ]:
            denied = await c.call_tool(tool, args)
            assert denied.is_error and reason in text_of(denied), (tool, args, text_of(denied))
    assert not (ws / "src").exists()


async def test_admin_reaches_only_the_allow_listed_hosts(contained: RunningGateway) -> None:
    """Refused egress: the admin's shell keeps the web profile's allow-list; anything else is refused by the
    gateway's egress proxy, counted and logged."""

    def refused() -> float:
        text = httpx2.get(contained.admin_base + "/metrics", timeout=10).text
        m = re.search(r'^mcp_gateway_egress_denied_total\{server="sh"\} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    before = refused()
    async with mcp_client(contained.url, ADMIN) as c:
        r = await run(c, "curl -sS -o /dev/null --max-time 20 https://example.com/")
        assert not r.is_error, text_of(r)
        s = r.structured_content
        assert s["exit_code"] != 0 and "403" in s["stderr"], s
        # the admin's commands are not allow-listed (any program, operators too), still in the sandbox
        mine = await run(c, "echo $HOME; cat /etc/shadow 2>&1 | head -1")
        assert mine.structured_content["stdout"].splitlines()[0].endswith("/workspaces/platform-admin")
        assert "No such file" in mine.structured_content["stdout"]
    assert refused() > before
    assert "example.com" in contained.log.read_text()


# --- the docs' policy eval example, and eval agreeing with the gateway on the contained example ---------------


def eval_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "policy", "eval", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_docs_policy_eval_example_prints_what_the_docs_show() -> None:
    doc = (REPO / "docs" / "policy.md").read_text()
    block = re.search(r"```\n\$ (mcp-gateway policy eval .*?)```", doc, re.S)
    assert block is not None
    command, _, shown = block.group(1).partition("\n      --args ")
    args_json, _, output = shown.partition("\n")
    argv = [*command.replace("\\", " ").split()[3:], "--args", args_json.strip().strip("'")]
    r = eval_cli(*argv)
    assert r.returncode == 1, r  # denied
    want = [line for line in output.splitlines() if not line.startswith(("revision:", "time:"))]
    got = [line for line in r.stdout.splitlines() if not line.startswith(("revision:", "time:"))]
    assert got == want


def test_policy_eval_agrees_with_the_contained_gateway() -> None:
    """The issue's case: eval said allow while the gateway denied; both now decide on the tool's real annotations."""
    r = eval_cli(
        "--config",
        "examples/contained.toml",
        "--agent",
        "ci-bot",
        "--tool",
        "sh__run",
        "--args",
        '{"command": "ls -la"}',
    )
    assert r.returncode == 0 and r.stdout.startswith("decision:    allow"), r
    assert 'containment: {"network":"none"}' in r.stdout
    r = eval_cli(
        "--config",
        "examples/contained.toml",
        "--agent",
        "ci-bot",
        "--tool",
        "sh__run",
        "--args",
        '{"command": "rm -rf /"}',
    )
    assert r.returncode == 1 and "command rm is not in the allow-list of your roles" in r.stdout, r
