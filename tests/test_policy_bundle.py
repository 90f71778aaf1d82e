"""policy.path may be an OPA bundle (.tar.gz with a .manifest, as `opa build` writes and bundle servers serve):
its manifest revision is the policy revision, and a gateway serves from it."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import httpx2
import orjson
import pytest

from gateway.policy import PolicyError
from gateway.policy.embedded import compile_policy
from gateway.policy.loader import load_policy
from gateway.policy.tables import report, run_policy_tables
from tests.conftest import ECHO, KEYS, REPO, default_config, free_port, mcp_client, start_gateway, stdio_upstream


def make_bundle(
    dst: Path, src: Path = REPO / "rego", manifest: dict | bytes | None = None, extra: dict[str, bytes] | None = None
) -> Path:
    """A bundle laid out as `opa build -b` lays it out: members named /<path>, a /.manifest, gzip'd tar."""
    with tarfile.open(dst, "w:gz") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        if manifest is not None:
            add("/.manifest", manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode())
        for p in sorted(src.rglob("*")):
            if p.is_file():
                add("/" + p.relative_to(src).as_posix(), p.read_bytes())
        for name, data in (extra or {}).items():
            add(name, data)
    return dst


def test_a_bundle_is_the_same_policy_with_the_manifest_revision(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle.tar.gz", manifest={"revision": "2026-11-27.3", "roots": [""]})
    policy = compile_policy(bundle, "gateway/decision")
    assert policy.revision == "2026-11-27.3"
    directory = load_policy(REPO / "rego")
    assert policy.source.modules == directory.modules and policy.source.data == directory.data
    lines, failed = report(run_policy_tables(policy))
    assert failed == 0 and lines[-1].startswith(f"{len(lines) - 1} passed"), lines[-3:]
    assert any(ln.startswith(f"PASS {bundle}:teams/platform_test.yaml: ") for ln in lines)


def test_a_bundle_without_a_revision_is_named_by_its_digest(tmp_path: Path) -> None:
    a = compile_policy(make_bundle(tmp_path / "a.tar.gz"), "gateway/decision")
    b = compile_policy(make_bundle(tmp_path / "b.tar.gz", manifest={"roots": [""]}), "gateway/decision")
    assert a.revision == b.revision == load_policy(REPO / "rego").revision


def test_errors_in_a_bundle_name_the_bundle_and_the_member(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "gateway.rego").write_text('package gateway\n\nimport rego.v1\n\ndecision := http.send({"url": "x"})\n')
    with pytest.raises(PolicyError) as err:
        compile_policy(make_bundle(tmp_path / "bad.tar.gz", bad, {"revision": "r1"}), "gateway/decision")
    assert err.value.errors[0].startswith(f"{tmp_path / 'bad.tar.gz'}:gateway.rego:5:")


@pytest.mark.parametrize(
    ("manifest", "extra", "expected"),
    [
        (b"{not json", None, ".manifest: invalid JSON"),
        ({"revision": 7}, None, ".manifest: revision must be a string"),
        ({"revision": "r", "rego_version": 0}, None, "rego_version 0 bundles are not supported"),
        ({"revision": "r"}, {"/data.json": b"[1, 2]"}, "a data document must be an object"),
        ({"revision": "r"}, {"/teams/data.json": b'{"platform": 1}'}, "sets teams.platform to another value"),
        ({"revision": "r"}, {"/global/data.yaml": b"suspended_agents: [x]"}, "sets global.suspended_agents to"),
    ],
)
def test_a_broken_bundle_is_refused(tmp_path: Path, manifest: dict | bytes, extra: dict | None, expected: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_policy(make_bundle(tmp_path / "x.tar.gz", manifest=manifest, extra=extra))
    assert any(expected in e for e in err.value.errors), err.value.errors


def test_a_file_that_is_not_a_bundle_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "fake.tar.gz"
    fake.write_bytes(b"this is not gzip")
    with pytest.raises(PolicyError) as err:
        load_policy(fake)
    assert "not a readable OPA bundle" in err.value.errors[0]
    with pytest.raises(PolicyError) as err:
        load_policy(tmp_path / "missing.tar.gz")
    assert "does not exist" in err.value.errors[0]


def test_bundle_member_paths_stay_inside_the_bundle(tmp_path: Path) -> None:
    """Bundles are read in memory, never extracted; a member named ../../x is placed at x in the data tree."""
    bundle = make_bundle(
        tmp_path / "b.tar.gz", manifest={"revision": "r"}, extra={"../../escape/data.json": b'{"k": 1}'}
    )
    assert load_policy(bundle).data["escape"] == {"k": 1}


def test_data_documents_that_do_not_clash_merge(tmp_path: Path) -> None:
    merged = make_bundle(
        tmp_path / "m.tar.gz",
        manifest={"revision": "r"},
        extra={"/teams/extra/data.yaml": b"k: 2", "/teams/data.yaml": b"extra: {j: 3}"},
    )
    assert load_policy(merged).data["teams"]["extra"] == {"k": 2, "j": 3}  # documents that do not clash merge
    assert not (tmp_path.parent.parent / "escape").exists()


@pytest.mark.anyio
async def test_a_gateway_serves_from_a_bundle(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "policy.tar.gz", manifest={"revision": "bundle-rev-42"})
    port = free_port()
    gw = start_gateway(tmp_path, default_config(port, tmp_path, stdio_upstream("echo", ECHO), policy=bundle), port)
    try:
        ready = httpx2.get(gw.admin_base + "/readyz").json()
        assert ready["policy_revision"] == "bundle-rev-42"
        async with mcp_client(gw.url, KEYS["ci-bot"][2]) as c:
            assert not (await c.call_tool("echo__echo", {"text": "hi"})).is_error
            denied = await c.call_tool("echo__delete_everything", {})
            assert denied.is_error and "destructive tools need the admin role" in denied.content[0].text  # type: ignore[union-attr]
        metrics = httpx2.get(gw.admin_base + "/metrics").text
        assert 'mcp_gateway_policy_revision_info{revision="bundle-rev-42"} 1.0' in metrics
    finally:
        gw.stop()
    decisions = [r for r in gw.audit_records() if r["type"] == "decision"]
    assert decisions and all(r["bundles"]["gateway"]["revision"] == "bundle-rev-42" for r in decisions)
    assert orjson.loads(orjson.dumps(decisions[-1]))["reasons"] == ["destructive tools need the admin role"]
