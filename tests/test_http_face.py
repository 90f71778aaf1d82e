"""The HTTP face: what the agent port serves, what only the admin listener serves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import ECHO, RunningGateway, default_config, free_port, start_gateway, stdio_upstream


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("face")
    port = free_port()
    g = start_gateway(workdir, default_config(port, workdir, stdio_upstream("echo", ECHO)), port)
    yield g
    g.stop()


def test_metrics_and_readiness_are_not_on_the_agent_port(gw: RunningGateway) -> None:
    """/metrics and /readyz name every agent and tool: the agent port answers 404, the admin listener serves them."""
    for path in ("/metrics", "/readyz"):
        assert httpx2.get(gw.base + path).status_code == 404
    assert "mcp_gateway_" in httpx2.get(gw.admin_base + "/metrics").text
    assert httpx2.get(gw.admin_base + "/readyz").json()["ready"] is True
    assert httpx2.get(gw.admin_base + "/healthz").status_code == 200
    assert httpx2.get(gw.base + "/healthz").status_code == 200
    assert httpx2.get(gw.admin_base + "/mcp").status_code == 404  # and no agent traffic on the admin port


def test_admin_listen_must_differ_from_listen(tmp_path: Path) -> None:
    from gateway.config import ConfigError, load_config

    cfg = tmp_path / "g.toml"
    cfg.write_text('[server]\nlisten = "127.0.0.1:8080"\nadmin_listen = "127.0.0.1:8080"\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert any("admin_listen" in e for e in err.value.errors)
