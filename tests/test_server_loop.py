"""``[server] loop`` and ``http``: the event loop and the agent port's HTTP parser, chosen at load, and a gateway
that serves calls with each."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config as config_module
from tests.test_containment_profiles import STRICT, errors, load
from tests.test_protocol_bad_input import open_session, recorder_gateway, still_serving

CONTAINED = '[[upstreams]]\nname = "sh"\ntransport = "builtin"\ntools = "shell"\ncontainment = "strict"\n'


def test_auto_picks_uvloop_and_httptools_when_installed_and_nothing_is_contained() -> None:
    cfg = load("")
    assert cfg.event_loop == "uvloop" and cfg.server.http_parser == "httptools"  # type: ignore[attr-defined]
    cfg = load(STRICT + CONTAINED)
    assert cfg.event_loop == "asyncio"  # type: ignore[attr-defined]  # uvloop cannot start contained workers
    cfg = load('[server]\nloop = "asyncio"\nhttp = "h11"\n')
    assert cfg.event_loop == "asyncio" and cfg.server.http_parser == "h11"  # type: ignore[attr-defined]


def test_uvloop_with_a_contained_upstream_is_refused_at_load() -> None:
    errs = errors('[server]\nloop = "uvloop"\n' + STRICT + CONTAINED)
    assert any("cannot start contained workers" in e for e in errs), errs


def test_a_bad_or_missing_choice_is_refused_and_auto_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    errs = errors('[server]\nloop = "trio"\nhttp = "h2"\n')
    assert any(e.startswith("g.toml: server.loop") for e in errs) and any("server.http" in e for e in errs), errs
    monkeypatch.setattr(config_module, "_installed", lambda module: False)
    errs = errors('[server]\nloop = "uvloop"\nhttp = "httptools"\n')
    assert any("'uvloop' is not installed" in e for e in errs), errs
    assert any("'httptools' is not installed" in e for e in errs), errs
    cfg = load("")
    assert cfg.event_loop == "asyncio" and cfg.server.http_parser == "h11"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("loop", "http"), [("uvloop", "httptools"), ("asyncio", "h11"), ("uvloop", "h11")])
def test_the_gateway_serves_calls_on_each_loop_and_parser(tmp_path: Path, loop: str, http: str) -> None:
    gw = recorder_gateway(tmp_path, f'loop = "{loop}"\nhttp = "{http}"\n')
    try:
        still_serving(gw, open_session(gw))
        assert f"event loop {loop}, HTTP parser {http}" in gw.log.read_text()
    finally:
        gw.stop()
