"""The bundle source's lifecycle: poll the bundle server, verify, hand a new revision to the tests-gated reload.

OPA's bundle service protocol: ``GET <bundle_url>`` with ``If-None-Match: <ETag of the active bundle>``; 304 means
unchanged, 200 brings a ``.tar.gz``. A bundle that cannot be read, is too large, has unsafe members, fails its
signature, fails to compile or fails its table tests is refused and logged; the active revision keeps serving, and
the same bytes are not tested again until the server serves others. A server that is down or answers an error
changes nothing either; the next poll tries again.

Until the first bundle is active the gateway serves a placeholder policy that denies everything ("no policy bundle
loaded yet", revision ``no-bundle-yet``) and ``/readyz`` answers 503, unless ``bundle_fallback_path`` names a
policy to serve meanwhile (then the gateway is ready on it).
"""

from __future__ import annotations

import hashlib
import logging
import random
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx2

from gateway.bundles import archive
from gateway.bundles.archive import BundleRefused
from gateway.bundles.settings import BundleSettings, bundle_settings
from gateway.config import Config, PolicyConfig

log = logging.getLogger("gateway.policy.bundle")

PLACEHOLDER_REVISION = "no-bundle-yet"
NO_BUNDLE_REASON = "no policy bundle loaded yet"

Load = Callable[[str, Path], Awaitable[Any]]
"""The reload: compile and test the bundle file, swap it in if both pass; returns a ReloadResult."""


def _placeholder(decision: str) -> bytes:
    """A bundle whose one rule denies everything: what decides until the first real bundle is active."""
    package, _, rule = decision.rpartition("/")
    rego = f'package {package.replace("/", ".")}\n\n{rule} := {{"allow": false, "reasons": ["{NO_BUNDLE_REASON}"]}}\n'
    manifest = f'{{"revision": "{PLACEHOLDER_REVISION}"}}'.encode()
    return archive.repack({".manifest": manifest, "no_bundle.rego": rego.encode()})


class BundleSource:
    """One per gateway with ``[policy] bundle_url``: the poller, its state for /readyz, and its working files."""

    def __init__(self, settings: BundleSettings, metrics: Any = None):
        self.settings = settings
        self.metrics = metrics
        self._tmp = tempfile.TemporaryDirectory(prefix="mcp-gateway-bundles-")
        self.dir = Path(self._tmp.name)
        self.etag: str | None = None
        self.revision: str | None = None
        """The revision of the active bundle (None until one is)."""
        self.roots: list[str] = []
        self.last_poll: str | None = None
        self.last_error: str | None = None
        self._refused: tuple[str, str] | None = None
        """(sha256 of the bytes, why): the last refused download, not tested again while the server serves it."""
        self._active: str | None = None
        """sha256 of the active bundle's bytes."""
        self._seq = 0
        self._wake = anyio.Event()

    @classmethod
    def from_config(cls, config: Config, metrics: Any = None) -> BundleSource:
        return cls(bundle_settings(config), metrics)

    def initial_policy(self, cfg: PolicyConfig) -> PolicyConfig:
        """The policy the engine opens with: the fallback, or the deny-everything placeholder."""
        if self.settings.fallback is not None:
            return cfg.model_copy(update={"path": str(self.settings.fallback)})
        path = self.dir / "placeholder.tar.gz"
        path.write_bytes(_placeholder(cfg.decision))
        return cfg.model_copy(update={"path": str(path)})

    @property
    def ready(self) -> bool:
        return self.revision is not None or self.settings.fallback is not None

    def report(self) -> dict[str, Any]:
        """What /readyz shows: never the token, never the key."""
        return {
            "url": self.settings.url,
            "ready": self.ready,
            "revision": self.revision,
            "roots": self.roots,
            "etag": self.etag,
            "signed": self.settings.verify,
            "last_poll": self.last_poll,
            "last_error": self.last_error,
            "fallback": str(self.settings.fallback) if self.settings.fallback and self.revision is None else None,
        }

    def poll_now(self, why: str = "SIGHUP") -> Awaitable[None]:
        """Wake the poller (SIGHUP in bundle mode polls at once instead of rereading a file)."""
        log.info("policy bundle: poll requested (%s)", why)
        self._wake.set()
        return anyio.sleep(0)

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.policy_bundle_polls.labels(result).inc()

    async def run(self, load: Load) -> None:
        """Poll for the gateway's lifetime: at once, then every 75-100 % of ``bundle_poll_s`` (or on SIGHUP)."""
        async with httpx2.AsyncClient(
            timeout=httpx2.Timeout(self.settings.timeout_s), follow_redirects=False
        ) as client:
            while True:
                try:
                    await self.poll_once(client, load)
                except Exception:  # a bug must not end polling; the active revision keeps serving
                    log.exception("policy bundle: poll failed unexpectedly")
                    self._count("error")
                with anyio.move_on_after(self.settings.poll_s * random.uniform(0.75, 1.0)):
                    await self._wake.wait()
                self._wake = anyio.Event()

    async def _download(self, client: httpx2.AsyncClient) -> tuple[int, bytes, str | None]:
        headers = {"Accept": "application/gzip", "Accept-Encoding": "identity"}
        if self.etag:
            headers["If-None-Match"] = self.etag
        token = self.settings.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with client.stream("GET", self.settings.url, headers=headers) as resp:
            if resp.status_code != 200:
                return resp.status_code, b"", None
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.settings.max_bytes:
                raise BundleRefused(f"bundle is {declared} bytes, over bundle_max_bytes ({self.settings.max_bytes})")
            body = bytearray()
            async for chunk in resp.aiter_raw():
                body += chunk
                if len(body) > self.settings.max_bytes:
                    raise BundleRefused(f"bundle is over bundle_max_bytes ({self.settings.max_bytes}): download cut")
            return 200, bytes(body), resp.headers.get("etag")

    def _prepare(self, raw: bytes) -> tuple[Path, dict[str, Any]]:
        """Unpack, check, verify and repack (in a worker thread): the file the reload will load."""
        from gateway.bundles import signing  # PyJWT only when bundles are configured

        files = archive.unpack(raw, self.settings.max_unpacked_bytes)
        signing.verify(files, self.settings)
        manifest = archive.manifest(files)
        files.pop(archive.SIGNATURES, None)
        self._seq += 1
        path = self.dir / f"bundle-{self._seq}.tar.gz"
        path.write_bytes(archive.repack(files))
        return path, manifest

    async def poll_once(self, client: httpx2.AsyncClient, load: Load) -> str:
        """One poll; returns its result: unchanged, activated, refused or error (the metric's label)."""
        self.last_poll = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            status, raw, etag = await self._download(client)
        except BundleRefused as exc:
            return self._refuse(str(exc), None)
        except httpx2.HTTPError as exc:
            return self._error(f"bundle server unreachable: {type(exc).__name__}: {exc}")
        if status == 304:
            self.last_error = None
            self._count("unchanged")
            return "unchanged"
        if status != 200:
            return self._error(f"bundle server answered HTTP {status}")
        digest = hashlib.sha256(raw).hexdigest()
        if self._refused is not None and self._refused[0] == digest:
            self._count("refused")
            return "refused"  # the same bytes as last time: the same refusal, without compiling them again
        if digest == self._active:  # a server without ETags sends the active bundle again: nothing to test
            self.etag = etag
            self.last_error = None
            self._count("unchanged")
            return "unchanged"
        try:
            path, manifest = await anyio.to_thread.run_sync(self._prepare, raw)
        except BundleRefused as exc:
            return self._refuse(str(exc), digest)
        result = await load("bundle", path)
        for old in self.dir.glob("bundle-*.tar.gz"):
            if old != path:
                old.unlink(missing_ok=True)
        if result.result not in ("success", "unchanged"):
            return self._refuse(f"{result.result}: " + "; ".join(result.details[:5]), digest)
        self.etag = etag
        self.revision = result.revision
        roots = manifest.get("roots", [""])
        self.roots = list(roots) if isinstance(roots, list) else []
        self.last_error = None
        self._refused = None
        self._active = digest
        self._count("activated")
        return "activated"

    def _refuse(self, why: str, digest: str | None) -> str:
        self._refused = (digest, why) if digest is not None else None
        self.last_error = f"refused: {why}"[:1000]
        log.error("policy bundle from %s refused, revision %s keeps serving: %s", self.settings.url, self.revision, why)
        self._count("refused")
        return "refused"

    def _error(self, why: str) -> str:
        if why[:1000] != self.last_error:  # logged when it starts or changes, not on every poll
            log.warning(
                "policy bundle poll of %s: %s; revision %s keeps serving", self.settings.url, why, self.revision
            )
        self.last_error = why[:1000]
        self._count("error")
        return "error"
