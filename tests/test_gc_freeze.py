"""A serving gateway has moved its start-up objects out of the garbage collector's reach (gc.freeze), so a full
collection during a call walks only what calls create (issue 13: about 3 ms per full collection before)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ECHO, probed_gateway

PROBE = """
import gc
def probe():
    return gc.get_freeze_count()
"""


def test_serving_gateway_has_frozen_its_start_up_objects(tmp_path: Path) -> None:
    upstream = f'[[upstreams]]\nname = "echo"\ntransport = "stdio"\ncommand = {json.dumps(ECHO)}\n'
    with probed_gateway(tmp_path, upstream, PROBE) as gw:
        frozen = int(gw.probe())
    assert frozen > 10_000  # modules, models, the compiled policy: far more than any call creates
