"""The official MCP conformance suite through the gateway (conformance/run mcp), as part of the test run.

Server side: all 32 scenarios against /mcp/fixture, each must pass. Client side (the gateway as the MCP client
of a remote upstream): a sample that covers SSE resumption, pre-registered OAuth clients and scope step-up.
The suite's own reports are kept under var/conformance/mcp/.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

RUN = [sys.executable, str(REPO / "conformance" / "mcp" / "run.py")]


def run(*args: str) -> str:
    proc = subprocess.run([*RUN, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    return proc.stdout + proc.stderr


@pytest.mark.timeout(600)  # 32 scenarios, each a new agent session with its own upstream process
def test_every_server_scenario_passes_through_the_gateway() -> None:
    out = run("--skip-direct")
    assert out.rstrip().splitlines()[-1] == "32 passed, 0 failed", out[-3000:]
    assert "other upstream for the conformance identity: denied" in out


@pytest.mark.parametrize("scenario", ["sse-retry", "auth/pre-registration", "auth/scope-step-up"])
def test_client_scenarios_of_the_upstream_side(scenario: str) -> None:
    out = run("--client", "--scenario", scenario)
    assert out.rstrip().splitlines()[-1] == "1 passed, 0 failed", out[-3000:]
