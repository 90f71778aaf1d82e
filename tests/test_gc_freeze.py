"""A serving gateway has moved its start-up objects out of the garbage collector's reach (gc.freeze), so a full
collection during a call walks only what calls create (issue 13: about 3 ms per full collection before)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from tests.conftest import ECHO, REPO, default_config, free_port, with_admin_port

WRAPPER = """
import gc, os, signal, sys
sys.path.insert(0, os.getcwd())

def dump(*_):
    out = os.environ["GATEWAY_FROZEN_OUT"]
    with open(out + ".tmp", "w") as f:
        f.write(str(gc.get_freeze_count()))
    os.replace(out + ".tmp", out)

signal.signal(signal.SIGUSR1, dump)
sys.argv[0] = "gateway"
from gateway.cli import main
main()
"""


def test_serving_gateway_has_frozen_its_start_up_objects(tmp_path: Path) -> None:
    port = free_port()
    upstream = f'[[upstreams]]\nname = "echo"\ntransport = "stdio"\ncommand = {json.dumps(ECHO)}\n'
    config, admin_port = with_admin_port(default_config(port, tmp_path, upstream))
    (tmp_path / "gateway.toml").write_text(config)
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    out, log = tmp_path / "frozen.txt", tmp_path / "gateway.log"
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "wrapper.py"), "serve", "--config", str(tmp_path / "gateway.toml")],
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "GATEWAY_FROZEN_OUT": str(out)},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx2.get(f"http://127.0.0.1:{admin_port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                time.sleep(0.1)
        proc.send_signal(signal.SIGUSR1)
        while not out.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(15)
    assert int(out.read_text()) > 10_000  # modules, models, the compiled policy: far more than any call creates
