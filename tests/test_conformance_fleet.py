"""The fleet scenario (``conformance/run fleet``) as part of the test suite: three replicas behind round-robin
nginx, Redis, a recording upstream, 60 sessions of 12 agents in both eras, ``kill -9`` of one replica half way.
Slow (a minute or two): it runs a real load."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import REPO


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fleet_scenario() -> None:
    r = subprocess.run(
        [str(REPO / "conformance" / "run"), "fleet", "--seconds", "20"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=590,
    )
    lines = r.stdout.strip().splitlines()
    assert lines, r.stderr[-3000:]
    m = re.fullmatch(r"(\d+) passed, (\d+) failed", lines[-1])
    assert m is not None, r.stdout[-3000:] + r.stderr[-3000:]
    failures = [line for line in lines if line.startswith("FAIL")]
    assert int(m.group(2)) == 0, "\n".join(failures)
    assert int(m.group(1)) >= 7
