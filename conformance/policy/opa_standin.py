"""A stand-in for an OPA server: OPA's REST Data API, served by us, for tests and conformance runs.

No OPA binary can be installed on the machines this project is built on, so the gateway's OPA engine is tested
against this server instead. It speaks the part of OPA's Data API the engine uses, as OPA does:

- ``POST /v1/data/{path}`` with ``{"input": ...}`` -> ``{"result": ...}``; ``{}`` when the document is undefined;
  ``decision_id`` when decision ids are on (OPA: decision logging); ``provenance`` (with the bundle revision)
  when ``?provenance`` is asked; HTTP 500 ``{"code": "internal_error", ...}`` when evaluation fails.
- ``GET /health`` -> ``{}``; with ``--token``, requests without ``Authorization: Bearer <token>`` get 401.
- ``PUT /_standin/fault`` ``{"mode": "status500" | "slow" | "undefined" | "garbage" | "odd-metadata" | "none",
  "delay_ms": N}`` injects the failures the engine must survive (this endpoint is ours, not OPA's);
  ``odd-metadata`` answers the right result with a ``provenance`` and a ``decision_id`` not shaped as OPA's.

Two evaluators back it: ``regopy`` (rego-cpp, as the embedded engine) and ``opa-go`` (OPA's own Go evaluator
through the ``opa-golib-python-bindings`` package, when installed), which makes this a real-OPA oracle.

    python conformance/policy/opa_standin.py --policy rego --port 8181 [--backend opa-go] [--token T]
"""

from __future__ import annotations

import argparse
import hmac
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gateway.policy.loader import PolicySource, load_policy  # noqa: E402


class RegopyBackend:
    """rego-cpp: one compiled bundle per document path asked for, one evaluator per thread."""

    name = "regopy"

    def __init__(self, source: PolicySource):
        self.source = source
        self._bundles: dict[str, Any] = {}
        self._local = threading.local()
        self._lock = threading.Lock()

    def _bundle(self, path: str) -> Any:
        with self._lock:
            if path not in self._bundles:
                from regopy import Interpreter

                b = Interpreter()
                for name, text in self.source.modules.items():
                    b.add_module(name, text)
                b.add_data_json(orjson.dumps(self.source.data).decode())
                query = "x := data" + "".join("." + p for p in path.split("/") if p)
                self._bundles[path] = b.build(query, [path] if path else [])
            return self._bundles[path]

    def evaluate(self, path: str, input: Any) -> tuple[bool, Any]:
        """(defined, value); raises on evaluation errors."""
        from regopy import Interpreter

        ev = getattr(self._local, "ev", None)
        if ev is None:
            ev = self._local.ev = Interpreter()
            ev.strict_built_in_errors = True
        ev.set_input_term(orjson.dumps(input).decode())
        out = ev.query_bundle(self._bundle(path))
        if not out.ok():
            raise RuntimeError(f"evaluation failed: {out}")
        try:
            return True, out[0]["x"]
        except (IndexError, KeyError):
            return False, None


class OpaGoBackend:
    """OPA's Go evaluator (opa-golib-python-bindings): the same semantics as an OPA server."""

    name = "opa-go"

    def __init__(self, source: PolicySource):
        from opa_bindings import OpaEngine

        self.source = source
        self._engine = OpaEngine()
        for name, text in source.modules.items():
            self._engine.add_policy(name, text)
        self._engine.add_data(source.data)

    def evaluate(self, path: str, input: Any) -> tuple[bool, Any]:
        from opa_bindings import OpaUndefinedError

        try:
            return True, self._engine.eval_document(".".join(p for p in path.split("/") if p), input)
        except OpaUndefinedError:
            return False, None


class Faults:
    mode = "none"
    delay_ms = 0


def build_app(backend: RegopyBackend | OpaGoBackend, token: str | None, decision_ids: bool) -> Starlette:
    faults = Faults()

    def authorised(request: Request) -> bool:
        given = request.headers.get("authorization", "").encode()
        return token is None or hmac.compare_digest(given, f"Bearer {token}".encode())

    def unauthorised() -> JSONResponse:
        return JSONResponse({"code": "unauthorized", "message": "the request is not authorized"}, 401)

    async def data(request: Request) -> Response:
        if not authorised(request):
            return unauthorised()
        path = request.path_params["path"]
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError as exc:
            return JSONResponse({"code": "invalid_parameter", "message": f"body is not JSON: {exc}"}, 400)
        if faults.mode == "slow":
            await anyio.sleep(faults.delay_ms / 1000)
        if faults.mode == "status500":
            return JSONResponse({"code": "internal_error", "message": "injected failure"}, 500)
        if faults.mode == "garbage":
            return Response(b"<html>proxy error</html>", 200, media_type="text/html")
        try:
            defined, value = await anyio.to_thread.run_sync(backend.evaluate, path, body.get("input"))
        except Exception as exc:
            return JSONResponse({"code": "internal_error", "message": str(exc)[:500]}, 500)
        out: dict[str, Any] = {}
        if decision_ids:
            out["decision_id"] = str(uuid.uuid4())
        if "provenance" in request.query_params:
            out["provenance"] = {
                "version": f"standin-{backend.name}",
                "bundles": {"gateway": {"revision": backend.source.revision}},
            }
        if faults.mode == "odd-metadata":
            out["provenance"], out["decision_id"] = ["not", "an", "object"], 42
        if defined and faults.mode != "undefined":
            out["result"] = value
        return Response(orjson.dumps(out), 200, media_type="application/json")

    warm = [False]

    async def health(request: Request) -> Response:
        if not warm[0]:  # the first evaluation on a worker thread (thread, Go runtime) outlasted a 200 ms deadline
            warm[0] = True
            try:
                await anyio.to_thread.run_sync(backend.evaluate, "gateway/decision", {})
            except Exception:  # a policy without that rule, or one that fails on {}, is still served
                pass
        return JSONResponse({})

    async def fault(request: Request) -> Response:
        doc = orjson.loads(await request.body() or b"{}")
        faults.mode = doc.get("mode", "none")
        faults.delay_ms = int(doc.get("delay_ms", 0))
        return JSONResponse({"mode": faults.mode})

    return Starlette(
        routes=[
            Route("/v1/data/{path:path}", data, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/_standin/fault", fault, methods=["PUT"]),
        ]
    )


def make_backend(name: str, source: PolicySource) -> RegopyBackend | OpaGoBackend:
    if name == "opa-go":
        return OpaGoBackend(source)
    return RegopyBackend(source)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default=str(REPO / "rego"), help="policy directory or OPA bundle")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--backend", choices=["regopy", "opa-go"], default="regopy")
    ap.add_argument("--token", default=None, help="require this bearer token")
    ap.add_argument("--no-decision-ids", action="store_true", help="answer without decision_id (logging off)")
    args = ap.parse_args()
    source = load_policy(Path(args.policy))
    backend = make_backend(args.backend, source)
    try:  # compile before /health answers: a first decision compiled under load outlasted the gateway's timeout_ms
        backend.evaluate("gateway/decision", {})
    except Exception:  # a policy without that rule, or one that fails on {}, is still served
        pass
    app = build_app(backend, args.token, not args.no_decision_ids)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
