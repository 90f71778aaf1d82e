"""The OPA engine: decisions from an OPA server over its REST Data API, through opa-python-client.

For fleets that already run OPA (and distribute bundles to it). One aiohttp session per engine keeps a pool of
keep-alive connections; every decision has a deadline (``timeout_ms``), and every failure — refused connection,
HTTP error, timeout, a body that is not JSON, an undefined decision — is a denial with ``error`` set. The
decision id OPA logs (when decision logging is on) is kept, so the gateway's audit record and OPA's decision log
can be joined. The revision is the one OPA reports for the bundles that decided (``?provenance``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any
from urllib.parse import urlsplit

# isort: off
# rego-cpp (regopy) must be loaded before aiohttp: aiohttp's frozenlist is C++ built against another libstdc++, and
# when it is loaded first rego-cpp's heap is corrupted ("double free or corruption" deciding the shipped tables).
import regopy  # noqa: F401
import aiohttp

# isort: on
import anyio
from opa_client import AsyncOpaClient

from gateway.config import PolicyConfig
from gateway.policy.decision import Decision, PolicyError

_QUERY = {"provenance": "true", "strict-builtin-errors": "true"}
UNKNOWN_REVISION = "opa"


def _revision(body: dict[str, Any]) -> str | None:
    """The bundle revision(s) in OPA's ``provenance``; None when it names none (or is not shaped as OPA's is)."""
    provenance = body.get("provenance")
    bundles = provenance.get("bundles") if isinstance(provenance, dict) else None
    if not isinstance(bundles, dict):
        return None
    revs = {name: b.get("revision") for name, b in bundles.items() if isinstance(b, dict)}
    revs = {k: v for k, v in revs.items() if isinstance(v, str) and v}
    if not revs:
        return None
    if len(revs) == 1:
        return next(iter(revs.values()))
    return ",".join(f"{k}:{v}" for k, v in sorted(revs.items()))


class OpaEngine:
    def __init__(self, cfg: PolicyConfig):
        if not cfg.opa_url:
            raise PolicyError(["policy.opa_url: required when engine = 'opa'"])
        url = urlsplit(cfg.opa_url)
        if url.username is not None or url.password is not None:  # the URL is shown in errors: never echo it
            raise PolicyError(
                [
                    "policy.opa_url: credentials do not go in the URL; name the bearer token's "
                    "environment variable in policy.opa_token_env"
                ]
            )
        try:
            port = url.port
        except ValueError:
            raise PolicyError([f"policy.opa_url: {cfg.opa_url!r}: the port is not a number up to 65535"]) from None
        if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/") or url.query:
            raise PolicyError([f"policy.opa_url: {cfg.opa_url!r} must be http(s)://host[:port], OPA's own address"])
        token = None
        if cfg.opa_token_env:
            token = os.environ.get(cfg.opa_token_env)
            if not token:
                raise PolicyError([f"policy.opa_token_env: environment variable {cfg.opa_token_env} is not set"])
        self._host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname  # the client joins host:port
        self._port = port or (443 if url.scheme == "https" else 80)
        self._ssl = url.scheme == "https"
        self._token = token
        self._package, _, self._rule = cfg.decision.rpartition("/")
        self._timeout = cfg.timeout_ms / 1000.0
        self._connect_timeout = max(1.0, 10 * self._timeout)
        self._client: AsyncOpaClient | None = None
        self._lock = anyio.Lock()
        self._revision = UNKNOWN_REVISION
        self.url = f"{url.scheme}://{url.netloc}/v1/data/{cfg.decision}"

    @property
    def revision(self) -> str:
        """The revision OPA reported with its last answer ("opa" until it has answered, or without bundles)."""
        return self._revision

    async def _session(self) -> AsyncOpaClient:
        """The shared client, opened on first use (its aiohttp session must live on the running event loop)."""
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    client = AsyncOpaClient(
                        host=self._host,
                        port=self._port,
                        ssl=self._ssl,
                        token=self._token,
                        retries=0,
                        timeout=self._timeout,
                    )
                    await client.__aenter__()
                    # The HTTP client's first request pays its own set-up (resolver, connection: a quarter of a
                    # second on a busy machine). Paid here, under its own bound, the first decision's deadline
                    # covers OPA's answer only, as every later one does.
                    with anyio.move_on_after(self._connect_timeout):
                        try:
                            await client.check_health()
                        except Exception:  # unreachable now: the decision says so, closed
                            pass
                    self._client = client
        return self._client

    def _failed(self, error: str, decision_id: str | None = None) -> Decision:
        return dataclasses.replace(Decision.failed(error, self._revision), engine_decision_id=decision_id)

    async def decide(self, input: dict[str, Any]) -> Decision:
        try:
            client = await self._session()
            with anyio.fail_after(self._timeout):
                body = await client.query_rule(
                    input_data=input,
                    package_path=self._package or self._rule,
                    rule_name=self._rule if self._package else None,
                    query_params=_QUERY,
                )
        except TimeoutError:
            return self._failed(f"OPA did not answer within {self._timeout * 1000:.0f} ms")
        except aiohttp.ContentTypeError as exc:
            return self._failed(f"OPA answer unusable: not JSON ({exc.message})"[:300])
        except aiohttp.ClientResponseError as exc:
            return self._failed(f"OPA answered HTTP {exc.status}: {exc.message}"[:300])
        except (aiohttp.ClientError, OSError) as exc:
            return self._failed(f"OPA unreachable at {self._host}:{self._port}: {type(exc).__name__}: {exc}"[:300])
        except Exception as exc:  # a malformed body or anything else unexpected: still a denial
            return self._failed(f"OPA answer unusable: {type(exc).__name__}: {exc}"[:300])
        if not isinstance(body, dict):
            return self._failed("OPA answer is not a JSON object")
        decision_id = body.get("decision_id") if isinstance(body.get("decision_id"), str) else None
        revision = _revision(body)
        if revision is not None:
            self._revision = revision
        if "result" not in body:
            return self._failed(f"the decision is undefined in OPA (is a policy loaded at {self.url}?)", decision_id)
        decision = Decision.from_result(body["result"], revision or self._revision, decision_id)
        return dataclasses.replace(decision, engine_decision_id=decision_id) if decision.error else decision

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close_connection()
