"""[policy] bundle_url: the gateway polls an OPA bundle server (ETag / If-None-Match), verifies signed bundles, and
feeds each new revision to the tests-gated reload. A refused bundle (unreadable, unsafe, badly signed, failing
its table tests) leaves the old revision serving; until the first bundle every request is denied and /readyz is
503. Driven through the real gateway, the real SDK client and a real HTTP bundle server."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from mcp.shared.exceptions import MCPError

from gateway.bundles import archive, signing
from gateway.bundles.archive import BundleRefused
from gateway.bundles.settings import BundleSettings
from tests.conftest import (
    ECHO,
    KEYS,
    REPO,
    RunningGateway,
    default_config,
    free_port,
    mcp_client,
    start_gateway,
    stdio_upstream,
)
from tests.fixtures.bundle_server import BundleServer

pytestmark = pytest.mark.anyio
POLL_S = 0.5


def policy_files(tests: bool = False, suspend: list[str] | None = None) -> dict[str, bytes]:
    """The shipped policy's files (its table tests only when ``tests``), ``suspend`` added to the suspended agents."""
    files = {}
    for p in sorted((REPO / "rego").rglob("*")):
        rel = p.relative_to(REPO / "rego").as_posix()
        if p.is_file() and (tests or "_test." not in rel):  # table tests and Rego tests
            files[rel] = p.read_bytes()
    if suspend:
        data = json.loads(files["data.json"])
        data["global"]["suspended_agents"] += suspend
        files["data.json"] = json.dumps(data, indent=2).encode()
    return files


def opa_hash(name: str, raw: bytes) -> str:
    """OPA's signed digest, computed independently for plain ASCII documents: structured files as sorted, compact
    JSON; everything else as bytes."""
    if name.rsplit("/", 1)[-1] in ("data.json", ".manifest"):
        raw = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()


def bundle(
    files: dict[str, bytes],
    revision: str,
    key: Any = None,
    alg: str = "RS256",
    kid: str | None = "gw",
    tamper: Callable[[dict[str, bytes]], None] | None = None,
) -> bytes:
    """A bundle as `opa build` lays it out (members named /<path>, a /.manifest), signed as `opa sign` signs when
    ``key`` is given; ``tamper`` edits the files after signing."""
    files = {".manifest": json.dumps({"revision": revision, "roots": [""]}).encode(), **files}
    if key is not None:
        payload = {"files": [{"name": n, "hash": opa_hash(n, b), "algorithm": "SHA-256"} for n, b in files.items()]}
        token = jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)
        files[".signatures.json"] = json.dumps({"signatures": [token]}).encode()
    if tamper is not None:
        tamper(files)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("/" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def settings(key: Any = None, alg: str = "RS256", key_id: str | None = None, scope: str = "") -> BundleSettings:
    return BundleSettings(
        "http://x/b.tar.gz", 1, 1, "gateway/decision", None, None, key.public_key() if key else None, key_id, alg,
        scope, 1 << 20, 1 << 20, None,
    )  # fmt: skip


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())


def check(raw: bytes, s: BundleSettings) -> dict[str, bytes]:
    files = archive.unpack(raw, s.max_unpacked_bytes)
    signing.verify(files, s)
    archive.manifest(files)
    return files


# --- the archive and the signature, without a gateway ---------------------------------------------------------


def _tar(members: list[tarfile.TarInfo], data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(data) if m.isfile() else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 1) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.size = kind, size if kind == tarfile.REGTYPE else 0
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        m.linkname = "/etc/passwd"
    return m


@pytest.mark.parametrize(
    "members, why",
    [
        ([_member("../evil.rego")], "not a plain relative path"),
        ([_member("/a/../../evil.rego")], "not a plain relative path"),
        ([_member("a//b.rego")], "not a plain relative path"),
        ([_member("a\\..\\b.rego")], "not a plain relative path"),
        ([_member("link.rego", tarfile.SYMTYPE)], "links, devices"),
        ([_member("hard.rego", tarfile.LNKTYPE)], "links, devices"),
        ([_member("dev", tarfile.CHRTYPE)], "links, devices"),
        ([_member("x.rego"), _member("/x.rego")], "appears twice"),
    ],
)
def test_unsafe_members_refuse_the_bundle(members: list[tarfile.TarInfo], why: str) -> None:
    with pytest.raises(BundleRefused, match=why):
        archive.unpack(_tar(members), 1 << 20)


def test_tar_bomb_is_refused_before_it_is_unpacked() -> None:
    bomb = io.BytesIO()
    with tarfile.open(fileobj=bomb, mode="w:gz") as tar:
        info = tarfile.TarInfo("data.json")
        info.size = 64 << 20
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    assert len(bomb.getvalue()) < 200_000  # 64 MiB of zeros compress to a few dozen KiB
    with pytest.raises(BundleRefused, match="unpacks to more than"):
        archive.unpack(bomb.getvalue(), 16 << 20)
    many = _tar([_member(f"f{i}.rego", size=0) for i in range(archive.MAX_MEMBERS + 1)], b"")
    with pytest.raises(BundleRefused, match="more than 10000 members"):
        archive.unpack(many, 1 << 30)
    with pytest.raises(BundleRefused, match="not a readable OPA bundle"):
        archive.unpack(b"\x1f\x8b" + b"garbage" * 10, 1 << 20)


def test_signed_bundle_verifies_and_every_tampering_is_refused() -> None:
    files = policy_files()
    s = settings(RSA, key_id="gw")
    assert "data.json" in check(bundle(files, "r1", RSA), s)
    assert check(bundle(files, "r1", EC, alg="ES256"), settings(EC, alg="ES256"))  # ES256 keys too

    def edit(f: dict[str, bytes]) -> None:
        f["gateway.rego"] += b"\n# changed after signing\n"

    cases: list[tuple[bytes, BundleSettings, str]] = [
        (bundle(files, "r1", RSA, tamper=edit), s, "gateway.rego: digest mismatch"),
        (bundle(files, "r1", RSA, tamper=lambda f: f.update({"extra.rego": b"package x"})), s, "not included"),
        (bundle(files, "r1", RSA, tamper=lambda f: f.pop("lib.rego")), s, "missing from the bundle: lib.rego"),
        (bundle(files, "r1"), s, "unsigned"),
        (bundle(files, "r1", rsa.generate_private_key(public_exponent=65537, key_size=2048)), s, "not valid"),
        (bundle(files, "r1", RSA, kid="other"), s, "signed with key 'other'"),
        (bundle(files, "r1", EC, alg="ES256"), s, "not valid"),  # the key decides the algorithm, not the token
        (bundle(files, "r1", RSA), settings(RSA, scope="prod"), "scope"),
        (bundle(files, "r1", RSA), settings(), "no bundle_public_key is configured"),
    ]
    for raw, st, why in cases:
        with pytest.raises(BundleRefused, match=why):
            check(raw, st)


def test_structured_files_hash_as_opa_hashes_them() -> None:
    """data.json and .manifest are hashed over sorted, compact JSON (numbers as written): reformatting them keeps
    the signature valid; any other file is hashed byte for byte."""
    a = b'{"b": [1, 2.50, {"y": "\\u00e9<&>", "x": null}], "a": true}'
    b = b'{"a":true,"b":[1,2.50,{"x":null,"y":"\xc3\xa9<&>"}]}'
    assert signing.file_hash("x/data.json", a, "SHA-256") == hashlib.sha256(b).hexdigest()
    assert signing.file_hash("x/other.json", a, "SHA-256") == hashlib.sha256(a).hexdigest()
    assert (
        signing.file_hash(".manifest", b'{"revision": "\\n"}', "SHA-256")
        == hashlib.sha256(b'{"revision":"\\n"}').hexdigest()
    )


# --- through the real gateway -------------------------------------------------------------------------------


def _gateway(
    tmp_path: Path, server: BundleServer, extra: str = "", env: dict[str, str] | None = None
) -> RunningGateway:
    port = free_port()
    config = default_config(port, tmp_path, stdio_upstream("echo", ECHO))
    bundle_cfg = f'bundle_url = "{server.url}"\nbundle_poll_s = {POLL_S}\n{extra}'
    config = re.sub(r'^path = ".*rego"\n', bundle_cfg, config, count=1, flags=re.M)
    return start_gateway(tmp_path, config, port, wait_ready=False, env=env)


def _readyz(gw: RunningGateway) -> tuple[int, dict[str, Any]]:
    r = httpx2.get(gw.admin_base + "/readyz", timeout=5)
    return r.status_code, r.json()


def _wait(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def _polls(server: BundleServer) -> int:
    return len(server.requests)


def _wait_polls(server: BundleServer, n: int) -> None:
    """Two poll intervals: ``n`` more requests reach the server (no wall-clock assertion: the machine is shared)."""
    start = _polls(server)
    _wait(lambda: _polls(server) >= start + n, f"{n} more polls")


async def _echo(gw: RunningGateway) -> tuple[bool, str]:
    """(denied, text): a tool the policy hides answers as an unknown one (hidden equals missing)."""
    async with mcp_client(gw.url, KEYS["ci-bot"][2]) as c:
        try:
            result = await c.call_tool("echo__echo", {"text": "hi"})
        except MCPError as exc:
            return True, str(exc)
    return bool(result.is_error), str(result.content[0].text)  # type: ignore[union-attr]


def _decisions(gw: RunningGateway) -> list[dict[str, Any]]:
    return [r for r in gw.audit_records() if r.get("type") == "decision" and r.get("action") == "tools/call"]


def _bundle_metric(gw: RunningGateway) -> dict[str, float]:
    text = httpx2.get(gw.admin_base + "/metrics").text
    return {
        m[0]: float(m[1])
        for m in re.findall(r'^mcp_gateway_policy_bundle_info\{revision="([^"]*)"\} (\S+)$', text, re.M)
    }


async def test_revisions_arrive_by_polling_and_refused_ones_keep_the_old_serving(tmp_path: Path) -> None:
    with BundleServer(token="bundle-secret") as server:
        gw = _gateway(tmp_path, server, 'bundle_token = "${BUNDLE_TOKEN}"\n', env={"BUNDLE_TOKEN": "bundle-secret"})
        try:
            # no bundle yet (the server answers 404): fail closed, not ready, every call denied
            _wait_polls(server, 1)
            status, ready = _readyz(gw)
            assert status == 503 and ready["policy_bundle"]["ready"] is False
            assert "HTTP 404" in ready["policy_bundle"]["last_error"]
            denied, text = await _echo(gw)
            assert denied and "Unknown tool" in text
            assert _decisions(gw)[-1]["reasons"] == ["no policy bundle loaded yet"]

            # revision A: allowed; the token was sent, and the next polls ask If-None-Match and get 304
            server.serve(bundle(policy_files(), "A"))
            _wait(lambda: _readyz(gw)[1]["policy_revision"] == "A", "revision A")
            assert _readyz(gw)[0] == 200
            assert _bundle_metric(gw) == {"A": 1.0}
            assert await _echo(gw) == (False, "hi")
            _wait_polls(server, 2)
            last = server.requests[-1]
            assert last["status"] == 304 and last["headers"]["If-None-Match"] == server.etag
            assert last["headers"]["Authorization"] == "Bearer bundle-secret"

            # revision B (suspends ci-bot; no tables) reaches the gateway within two poll intervals
            server.serve(bundle(policy_files(suspend=["ci-bot"]), "B"))
            start = _polls(server)
            _wait(lambda: _readyz(gw)[1]["policy_revision"] == "B", "revision B")
            assert _polls(server) - start <= 2
            assert (await _echo(gw))[0]
            assert _decisions(gw)[-1]["bundles"]["gateway"]["revision"] == "B"
            assert _bundle_metric(gw) == {"B": 1.0}

            # revision C fails its own table tests (they expect ci-bot to work): refused, B keeps serving
            server.serve(bundle(policy_files(tests=True, suspend=["ci-bot"]), "C"))
            _wait(lambda: "test_failure" in (_readyz(gw)[1]["policy_bundle"]["last_error"] or ""), "C refused")
            assert _readyz(gw)[1]["policy_revision"] == "B"
            assert (await _echo(gw))[0]
            # an unreadable answer and a server error change nothing either
            server.serve(b"not a tarball")
            _wait(lambda: "not a readable" in (_readyz(gw)[1]["policy_bundle"]["last_error"] or ""), "junk refused")
            server.serve_status(500)
            _wait(lambda: "HTTP 500" in (_readyz(gw)[1]["policy_bundle"]["last_error"] or ""), "500 seen")
            status, ready = _readyz(gw)
            assert status == 200 and ready["policy_revision"] == "B"
            assert "bundle-secret" not in gw.log.read_text()
        finally:
            gw.stop()


async def test_signed_bundles_a_bad_signature_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "bundle-key.pem"
    key_file.write_text(pem(RSA))
    with BundleServer() as server:
        server.serve(bundle(policy_files(), "signed-A", RSA))
        extra = f'bundle_public_key_file = "{key_file}"\nbundle_key_id = "gw"\n'
        gw = _gateway(tmp_path, server, extra)
        try:
            _wait(lambda: _readyz(gw)[1]["policy_revision"] == "signed-A", "signed revision A")
            assert await _echo(gw) == (False, "hi")

            def forge(f: dict[str, bytes]) -> None:
                f["data.json"] = policy_files(suspend=["ci-bot"])["data.json"]

            server.serve(bundle(policy_files(), "forged-B", RSA, tamper=forge))
            _wait(lambda: "digest mismatch" in (_readyz(gw)[1]["policy_bundle"]["last_error"] or ""), "forgery refused")
            server.serve(bundle(policy_files(suspend=["ci-bot"]), "unsigned-B"))
            _wait(lambda: "unsigned" in (_readyz(gw)[1]["policy_bundle"]["last_error"] or ""), "unsigned refused")
            assert _readyz(gw)[1]["policy_revision"] == "signed-A"
            assert await _echo(gw) == (False, "hi")
            server.serve(bundle(policy_files(suspend=["ci-bot"]), "signed-B", RSA))
            _wait(lambda: _readyz(gw)[1]["policy_revision"] == "signed-B", "signed revision B")
            assert (await _echo(gw))[0]
        finally:
            gw.stop()


async def test_fallback_policy_serves_until_the_first_bundle(tmp_path: Path) -> None:
    with BundleServer(etags=False) as server:  # a plain file server: no ETags, every poll downloads again
        gw = _gateway(tmp_path, server, f'bundle_fallback_path = "{REPO / "rego"}"\n')
        try:
            _wait(lambda: _readyz(gw)[0] == 200, "ready on the fallback")
            assert _readyz(gw)[1]["policy_bundle"]["fallback"] == str(REPO / "rego")
            assert await _echo(gw) == (False, "hi")
            server.serve(bundle(policy_files(suspend=["ci-bot"]), "B"))
            _wait(lambda: _readyz(gw)[1]["policy_revision"] == "B", "revision B")
            assert (await _echo(gw))[0]
            # the same bytes again are unchanged without being compiled and tested again
            _wait_polls(server, 2)
            assert all(r["status"] == 200 for r in server.requests[-2:])
            metrics = httpx2.get(gw.admin_base + "/metrics").text
            assert 'mcp_gateway_policy_reloads_total{result="success"} 1.0' in metrics
            assert 'mcp_gateway_policy_reloads_total{result="unchanged"}' not in metrics
            assert re.search(r'^mcp_gateway_policy_bundle_polls_total\{result="unchanged"\} [1-9]', metrics, re.M)
        finally:
            gw.stop()


@pytest.mark.parametrize(
    "extra, error",
    [
        ('bundle_url = "ftp://x/b.tar.gz"\n', "bundle_url must be http"),
        ('bundle_url = "http://user:pw@x/b.tar.gz"\n', "bundle_url must be http"),
        ("bundle_poll_s = 5\n", "need bundle_url"),
        ('bundle_url = "http://x/b"\nbundle_public_key = "not a key"\n', "not a PEM public key"),
        ('bundle_url = "http://x/b"\nbundle_token = "a"\nbundle_token_file = "t"\n', "at most one"),
        ('bundle_url = "http://x/b"\nbundle_token_file = "/nonexistent/t"\n', "does not exist"),
        (
            'bundle_url = "http://x/b"\nengine = "opa"\nopa_url = "http://127.0.0.1:8181"\n',
            "configure the bundle in OPA",
        ),
    ],
)
def test_bundle_settings_are_checked_at_load(tmp_path: Path, extra: str, error: str) -> None:
    import tomllib

    from gateway.config import ConfigError, parse_config

    text = default_config(free_port(), tmp_path, "").replace("[policy]\n", "[policy]\n" + extra, 1)
    with pytest.raises(ConfigError, match=error):
        parse_config(tomllib.loads(text), "gw.toml", tmp_path)
    if "PEM" in error:  # an EC key for an RS256 setting is refused too
        bad = text.replace('"not a key"', json.dumps(pem(EC)))
        with pytest.raises(ConfigError, match="not of the kind RS256"):
            parse_config(tomllib.loads(bad), "gw.toml", tmp_path)


async def test_with_the_opa_engine_the_revision_is_the_one_opa_reports(tmp_path: Path) -> None:
    """engine = "opa": OPA's own bundle plugin loads bundles; the gateway reports the revision OPA names in its
    answers' provenance (here a stand-in of OPA's REST API: no OPA binary exists on this machine)."""
    from gateway.policy.loader import load_policy
    from tests.test_policy_opa import SHIPPED, start_standin

    s = start_standin()
    port = free_port()
    config = default_config(port, tmp_path, stdio_upstream("echo", ECHO)).replace(
        f'path = "{SHIPPED}"', f'engine = "opa"\nopa_url = "{s.url}"\ntimeout_ms = 10000\nwatch_interval_s = 0.2', 1
    )
    gw = start_gateway(tmp_path, config, port)
    try:
        assert await _echo(gw) == (False, "hi")
        revision = load_policy(SHIPPED).revision
        _wait(lambda: _bundle_metric(gw) == {revision: 1.0}, "the revision OPA reported, as the gauge")
        assert _readyz(gw)[1]["policy_revision"] == revision
    finally:
        gw.stop()
        s.stop()


def test_a_validated_policy_config_validates_again_from_its_dump() -> None:
    """Commands re-validate a full dump (every field present): only a bundle_* setting that differs from its
    default needs bundle_url, not one merely present."""
    from gateway.config import PolicyConfig

    for cfg in (PolicyConfig(), PolicyConfig(bundle_url="http://x/b.tar.gz", bundle_poll_s=3)):
        assert PolicyConfig.model_validate(cfg.model_dump()) == cfg


async def test_every_replica_converges_and_every_replica_refuses(tmp_path: Path) -> None:
    """Two replicas polling one bundle server (each with its own token, so their polls can be told apart): a new
    revision is active on each within two of its polls; a revision failing its tests is refused by both, which
    keep serving the last good one."""
    with BundleServer(token={"replica-1", "replica-2"}) as server:
        server.serve(bundle(policy_files(), "A"))
        gws = [_gateway(tmp_path / f"r{i}", server, f'bundle_token = "replica-{i}"\n') for i in (1, 2)]
        try:
            for gw in gws:
                _wait(lambda gw=gw: _readyz(gw)[1]["policy_revision"] == "A", "revision A everywhere")
            server.serve(bundle(policy_files(suspend=["ci-bot"]), "B"))
            start = {i: len(server.polls(f"replica-{i}")) for i in (1, 2)}
            for i, gw in enumerate(gws, 1):
                _wait(lambda gw=gw: _readyz(gw)[1]["policy_revision"] == "B", "revision B everywhere")
                since = server.polls(f"replica-{i}")[start[i] :]
                # the poll that downloaded B (the only 200 since) activated it: at most the second poll after
                assert since.count(200) == 1 and since.index(200) <= 1, since
                assert (await _echo(gw))[0]
            server.serve(bundle(policy_files(tests=True, suspend=["ci-bot"]), "C-fails-its-tests"))
            for gw in gws:
                _wait(
                    lambda gw=gw: "test_failure" in (_readyz(gw)[1]["policy_bundle"]["last_error"] or ""),
                    "C refused everywhere",
                )
                assert _readyz(gw)[1]["policy_revision"] == "B" and _bundle_metric(gw) == {"B": 1.0}
        finally:
            for gw in gws:
                gw.stop()
