"""The containment battery (``conformance/run containment``) as part of the test suite.

It starts its own gateway and runs every escape attempt by both routes; as root (CI) it proves that workers
drop to their own uids. Slow-ish (about a minute): the limit attempts wait for their limits.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import REPO


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_escape_attempt_is_blocked() -> None:
    r = subprocess.run(
        [str(REPO / "conformance" / "run"), "containment"], cwd=REPO, capture_output=True, text=True, timeout=590
    )
    lines = r.stdout.strip().splitlines()
    assert lines, r.stderr[-3000:]
    m = re.fullmatch(r"(\d+) passed, (\d+) failed", lines[-1])
    assert m is not None, r.stdout[-3000:] + r.stderr[-3000:]
    passed, failed = int(m.group(1)), int(m.group(2))
    not_blocked = [line for line in lines if "NOT BLOCKED" in line]
    assert failed == 0 and not not_blocked, "\n".join(not_blocked)
    assert passed >= 80  # 40+ attempts, each by the built-in shell and by a contained stdio server
    assert r.returncode == 0
