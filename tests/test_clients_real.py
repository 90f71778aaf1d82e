"""Real upstream servers and a second, non-Python client through the gateway.

Upstreams: npm @modelcontextprotocol/server-everything (per-session: sampling, elicitation, roots and logging
relayed to the agent) and server-filesystem, PyPI mcp-server-git. Clients: the Python SDK, and npm
@modelcontextprotocol/inspector-cli (Node). The npm packages live in tests/npm (npm ci there; done here when
missing).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp.types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from pydantic import FileUrl

from tests.conftest import KEYS, REPO, RunningGateway, default_config, free_port, start_gateway, stdio_upstream

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]
NPM = REPO / "tests" / "npm"
KEY = KEYS["ci-bot"][2]
POLICY = """package gateway
import rego.v1

# Real servers, real rules: the filesystem is read-only for agents, git is allowed on the test repository only.
reasons contains "the filesystem upstream is read-only" if {
	input.action == "tools/call"
	input.server == "fs"
	not startswith(input.tool, "read")
	not startswith(input.tool, "list")
	not input.tool in {"get_file_info", "search_files", "directory_tree"}
}

reasons contains "git only in the test repository" if {
	input.action == "tools/call"
	input.server == "git"
	input.arguments.repo_path != data.repo
}

default decision := {"allow": false, "reasons": ["not an api key"]}

decision := {"allow": true, "reasons": []} if {
	input.agent.auth == "api_key"
	count(reasons) == 0
}

decision := {"allow": false, "reasons": [r | some r in reasons]} if count(reasons) > 0
"""


def node() -> str:
    found = shutil.which("node")
    assert found, "node is needed for the npm peers (scripts/setup.sh --test installs it)"
    return found


def npm_package(name: str) -> Path:
    path = NPM / "node_modules" / name
    if not path.exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NPM, check=True)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("workspace")
    (ws / "notes.txt").write_text("hello from the workspace\n")
    repo = ws / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "README.md").write_text("# test repo\n")
    subprocess.run([*git, "add", "README.md"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first commit"], check=True)
    return ws


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, workspace: Path) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("peers")
    policy = workdir / "rego"
    policy.mkdir()
    (policy / "p.rego").write_text(POLICY)
    (policy / "data.json").write_text(json.dumps({"repo": str(workspace / "repo")}))
    everything = npm_package("@modelcontextprotocol/server-everything") / "dist" / "index.js"
    filesystem = npm_package("@modelcontextprotocol/server-filesystem") / "dist" / "index.js"
    upstreams = (
        stdio_upstream("everything", [node(), str(everything), "stdio"], 'session_mode = "per_session"\n')
        + stdio_upstream("fs", [node(), str(filesystem), str(workspace)])
        + stdio_upstream("git", ["mcp-server-git"])
    )
    port = free_port()
    gw = start_gateway(workdir, default_config(port, workdir, upstreams, policy=policy), port)
    yield gw
    gw.stop()


@asynccontextmanager
async def client(url: str, **callbacks: Any) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None, **callbacks) as c:
        yield c


def text(result: types.CallToolResult) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def test_server_everything_with_relayed_sampling_elicitation_and_roots(gateway: RunningGateway) -> None:
    asked: dict[str, Any] = {}

    async def sample(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked["sampling"] = params.messages[0].content.text  # type: ignore[union-attr]
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled!"), model="m", stop_reason="endTurn"
        )

    async def elicit(ctx: Any, params: Any) -> types.ElicitResult:
        asked["elicitation"] = params.message
        return types.ElicitResult(action="decline")

    async def roots(ctx: Any) -> types.ListRootsResult:
        asked["roots"] = True
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///agent/project"), name="project")])

    async with client(
        gateway.url, sampling_callback=sample, elicitation_callback=elicit, list_roots_callback=roots
    ) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert {"everything__get-sum", "everything__trigger-sampling-request"} <= names
        assert "The sum of 2 and 3 is 5" in text(await c.call_tool("everything__get-sum", {"a": 2, "b": 3}))
        sampled = await c.call_tool("everything__trigger-sampling-request", {"prompt": "hi", "maxTokens": 5})
        assert "sampled!" in text(sampled) and "hi" in asked["sampling"]
        await c.call_tool("everything__trigger-elicitation-request", {})
        assert asked.get("elicitation")
        listed = await c.call_tool("everything__get-roots-list", {})
        assert "file:///agent/project" in text(listed)
        resources = (await c.list_resources()).resources
        assert resources
        read = await c.read_resource(str(resources[0].uri))
        assert read.contents
        prompts = (await c.list_prompts()).prompts
        assert any(p.name.startswith("everything__") for p in prompts)


async def test_server_filesystem_read_allowed_write_denied(gateway: RunningGateway, workspace: Path) -> None:
    async with client(gateway.url + "/fs") as c:
        read = await c.call_tool("read_text_file", {"path": str(workspace / "notes.txt")})
        assert "hello from the workspace" in text(read)
        listing = await c.call_tool("list_directory", {"path": str(workspace)})
        assert "notes.txt" in text(listing)
        denied = await c.call_tool("write_file", {"path": str(workspace / "new.txt"), "content": "x"})
        assert denied.is_error and "read-only" in text(denied)
    assert not (workspace / "new.txt").exists()


async def test_mcp_server_git_in_and_outside_its_repository(gateway: RunningGateway, workspace: Path) -> None:
    repo = str(workspace / "repo")
    async with client(gateway.url + "/git") as c:
        log = await c.call_tool("git_log", {"repo_path": repo})
        assert "first commit" in text(log)
        status = await c.call_tool("git_status", {"repo_path": repo})
        assert not status.is_error
        outside = await c.call_tool("git_status", {"repo_path": str(workspace)})
        assert outside.is_error and "git only in the test repository" in text(outside)


def inspector(gateway: RunningGateway, *args: str) -> dict[str, Any]:
    build = npm_package("@modelcontextprotocol/inspector-cli") / "build"
    proc = subprocess.run(
        [node(), "index.js", gateway.url, "--transport", "http", "--header", f"Authorization: Bearer {KEY}", *args],
        cwd=build,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return dict(json.loads(proc.stdout))


def test_inspector_cli_is_a_second_client(gateway: RunningGateway, workspace: Path) -> None:
    tools = inspector(gateway, "--method", "tools/list")
    names = {t["name"] for t in tools["tools"]}
    assert {"everything__echo", "fs__read_text_file", "git__git_log"} <= names
    echoed = inspector(gateway, "--method", "tools/call", "--tool-name", "everything__echo", "--tool-arg", "message=hi")
    assert "hi" in json.dumps(echoed["content"])
    denied = inspector(
        gateway,
        "--method",
        "tools/call",
        "--tool-name",
        "fs__write_file",
        "--tool-arg",
        f"path={workspace / 'x.txt'}",
        "content=x",
    )
    assert denied["isError"] and "read-only" in json.dumps(denied["content"])


def test_inspector_cli_without_a_key_is_refused(gateway: RunningGateway) -> None:
    build = npm_package("@modelcontextprotocol/inspector-cli") / "build"
    proc = subprocess.run(
        [node(), "index.js", gateway.url, "--transport", "http", "--method", "tools/list"],
        cwd=build,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "authentication required" in proc.stderr + proc.stdout


async def test_everything_sessions_run_concurrently(gateway: RunningGateway) -> None:
    async def one(i: int) -> str:
        async with client(gateway.url) as c:
            return text(await c.call_tool("everything__get-sum", {"a": i, "b": 1}))

    results: list[str] = []

    async def run(i: int) -> None:
        results.append(await one(i))

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(run, i)
    assert sorted(results) == sorted(f"The sum of {i} and 1 is {i + 1}." for i in range(4))
