"""The security suite (``conformance/run security``) as part of the test suite.

It starts its own gateways (one per class) and runs every adversarial attempt with its positive control; the test
fails when any attempt got through, proved nothing, or needs what the gateway does not have yet.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import REPO


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_every_security_attempt_holds() -> None:
    r = subprocess.run(
        [str(REPO / "conformance" / "run"), "security"], cwd=REPO, capture_output=True, text=True, timeout=1450
    )
    lines = r.stdout.strip().splitlines()
    assert lines, r.stderr[-3000:]
    m = re.fullmatch(r"(\d+) passed, (\d+) failed", lines[-1])
    assert m is not None, r.stdout[-3000:] + r.stderr[-3000:]
    passed, failed = int(m.group(1)), int(m.group(2))
    failures = [line for line in lines if line.startswith("  FAIL")]
    assert failed == 0, "\n".join(failures)
    assert passed >= 60
    assert r.returncode == 0
