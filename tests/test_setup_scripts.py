"""scripts/setup.sh installs into a virtual environment it makes, and scripts/test.sh runs the suite in it
(issue 11, finding 7: a fresh Debian 12's python3 is externally managed, PEP 668).

The fast part: the environment is made from Debian's own /usr/bin/python3, reused when sound, made again when
broken; test.sh runs pytest with the environment's python and its bin first on PATH. The slow part (a fresh
clone installed from the package index, then served) is scripts/check_setup.sh, run by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

SYSTEM_PYTHON = Path("/usr/bin/python3")


def copy_script(root: Path, name: str) -> Path:
    (root / "scripts").mkdir(parents=True, exist_ok=True)
    dest = root / "scripts" / name
    shutil.copy2(REPO / "scripts" / name, dest)
    return dest


def run(script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, timeout=300, env={**base, **(env or {})}
    )


def test_the_environment_is_made_from_debians_python_and_reused(tmp_path: Path) -> None:
    if not SYSTEM_PYTHON.exists():
        pytest.skip("no /usr/bin/python3")
    if subprocess.run([str(SYSTEM_PYTHON), "-c", "import ensurepip"]).returncode != 0 and os.geteuid() != 0:
        pytest.skip("python3-venv missing and not root (setup.sh would install it)")
    setup = copy_script(tmp_path, "setup.sh")
    r = run(setup, "--venv-only")
    assert r.returncode == 0, r.stderr
    venv = tmp_path / ".venv"
    assert r.stdout.strip().splitlines()[-1] == str(venv / "bin" / "python")
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in cfg.splitlines(), cfg
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sys; print(sys.prefix, sys.base_prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.split() == [str(venv), "/usr"]
    assert (venv / "bin" / "pip").exists()  # made with pip: the install goes into it, not the system

    marker = venv / "kept"
    marker.write_text("x")
    assert run(setup, "--venv-only").returncode == 0
    assert marker.exists(), "a sound environment is reused"

    (venv / "bin" / "python").unlink()  # say, its base interpreter went away
    r = run(setup, "--venv-only")
    assert r.returncode == 0, r.stderr
    assert not marker.exists() and (venv / "bin" / "python").exists(), "a broken environment is made again"


def test_an_old_or_missing_python_is_refused(tmp_path: Path) -> None:
    setup = copy_script(tmp_path, "setup.sh")
    r = run(setup, "--venv-only", env={"PYTHON": str(tmp_path / "no-python")})
    assert r.returncode == 1 and "is not Python 3.11 or newer" in r.stderr, r
    assert not (tmp_path / ".venv").exists()


def test_test_sh_runs_pytest_in_the_environment(tmp_path: Path) -> None:
    """test.sh runs setup --test, then the environment's python with its bin first on PATH (the conformance
    suites run `python run.py`; the demo upstreams are console scripts there)."""
    test_sh = copy_script(tmp_path, "test.sh")
    (tmp_path / "scripts" / "setup.sh").write_text('#!/bin/sh\necho "setup $*" > setup-called\n')
    (tmp_path / "scripts" / "setup.sh").chmod(0o755)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text('#!/bin/sh\necho "argv: $*"\necho "path: $PATH"\necho "venv: $VIRTUAL_ENV"\n')
    (bin_dir / "python").chmod(0o755)
    r = run(test_sh, "-x", "-q", "tests/test_x.py")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "setup-called").read_text().strip() == "setup --test"
    lines = r.stdout.splitlines()
    assert lines[0] == "argv: -m pytest -x -q tests/test_x.py"
    assert lines[1].startswith(f"path: {bin_dir}:")
    assert lines[2] == f"venv: {tmp_path / '.venv'}"
