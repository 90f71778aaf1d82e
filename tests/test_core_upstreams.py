"""Upstream transports: a remote streamable-HTTP server, and the clean environment of stdio children."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import (
    ECHO,
    KEYS,
    RunningGateway,
    default_config,
    echo_http_server,
    free_port,
    mcp_client,
    start_gateway,
    toml_list,
)

pytestmark = pytest.mark.anyio
KEY = KEYS["ci-bot"][2]


@pytest.fixture(scope="module")
def http_echo() -> Iterator[str]:
    with echo_http_server() as url:
        yield url


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, http_echo: str) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("up")
    port = free_port()
    upstreams = (
        f'[[upstreams]]\nname = "echo"\ntransport = "http"\nurl = "{http_echo}"\n'
        'headers = { "X-Upstream-Token" = "${UPSTREAM_TOKEN}" }\n\n'
        f'[[upstreams]]\nname = "local"\ntransport = "stdio"\ncommand = {toml_list(ECHO)}\n'
        'env = { GREETING = "hello" }\n'
    )
    env = {"GATEWAY_ONLY_SECRET": "s3cr3t", "UPSTREAM_TOKEN": "t0k3n"}
    # Transport tests: a policy that allows everything except destructive tools, so only transports are tested.
    policy = workdir / "rego"
    policy.mkdir()
    (policy / "p.rego").write_text(
        "package gateway\nimport rego.v1\n"
        "default allow := false\n"
        'allow if input.action != "tools/call"\n'
        "allow if not input.annotations.destructiveHint\n"
        'decision := {"allow": true, "reasons": []} if allow\n'
        'decision := {"allow": false, "reasons": ["destructive"]} if not allow\n'
    )
    gw = start_gateway(workdir, default_config(port, workdir, upstreams, policy=policy), port, env=env)
    yield gw
    gw.stop()


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_calls_reach_a_remote_http_upstream(gateway: RunningGateway, mode: str) -> None:
    async with mcp_client(gateway.url, KEY, mode) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert "echo__echo" in names
        result = await c.call_tool("echo__echo", {"text": "over http"})
        assert result.content[0].text == "over http"  # type: ignore[union-attr]
        denied = await c.call_tool("echo__delete_everything", {"path": "/"})
        assert denied.is_error


async def test_stdio_upstream_gets_only_its_configured_environment(gateway: RunningGateway) -> None:
    ready = httpx2.get(gateway.admin_base + "/readyz").json()
    assert ready["upstreams"]["local"]["up"]
    async with mcp_client(gateway.url + "/local", KEY) as c:
        result = await c.call_tool("env", {})
    assert not result.is_error, result.content
    names = set(result.content[0].text.split())  # type: ignore[union-attr]
    assert "GREETING" in names
    assert "GATEWAY_ONLY_SECRET" not in names and "UPSTREAM_TOKEN" not in names
    assert names <= {"GREETING", "PATH", "LC_CTYPE", "PWD"}, names


def test_secrets_do_not_reach_the_log(gateway: RunningGateway) -> None:
    text = Path(gateway.log).read_text()
    assert "t0k3n" not in text and "s3cr3t" not in text
