"""Opens the engine a configuration names, and compiles a policy for it; the gateway and the policy commands share
it.

``embedded`` (the default) is regorus's register VM (gateway/policy/rvm.py), ``regorus`` its interpreter (strict
built-in errors, slower), ``regopy`` rego-cpp (gateway/policy/embedded.py, the previous default), ``opa`` an OPA
server over REST. The first three run in-process and reload their policy from disk (``LOCAL_ENGINES``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from gateway.config import Config, PolicyConfig
from gateway.policy.decision import PolicyEngine
from gateway.policy.loader import PolicySource, load_policy

LOCAL_ENGINES = ("embedded", "regorus", "regopy")


def compile_source(source: PolicySource, decision_path: str, engine: str = "embedded") -> Any:
    """A compiled revision for a local engine; it has ``source``, ``revision`` and ``evaluate_input(input)``."""
    if engine == "regopy":
        from gateway.policy.embedded import CompiledPolicy

        return CompiledPolicy(source, decision_path)
    from gateway.policy.rvm import compile_regorus

    return compile_regorus(source, decision_path, interpreter=engine == "regorus")


def compile_policy(path: Path, decision_path: str, engine: str = "embedded") -> Any:
    """Load a policy directory or OPA bundle and compile it for ``engine``; PolicyError lists every problem."""
    return compile_source(load_policy(path), decision_path, engine)


def is_local(engine: Any) -> bool:
    """An engine that compiles the policy in-process (and so can reload it from disk)."""
    from gateway.policy.rvm import RvmEngine

    if isinstance(engine, RvmEngine):
        return True
    # Not imported: no regopy engine exists, and asking must not load regopy (~12 MB) into a gateway that runs none.
    embedded = sys.modules.get("gateway.policy.embedded")
    return embedded is not None and isinstance(engine, embedded.EmbeddedEngine)


def open_engine(cfg: PolicyConfig, config: Config) -> PolicyEngine:
    """A local engine (compiled and linted now) or the OPA engine (connects on first decision)."""
    if cfg.engine in ("embedded", "regorus"):
        from gateway.policy.rvm import RvmEngine

        return RvmEngine(config.resolve(cfg.path), cfg.decision, cfg.timeout_ms, interpreter=cfg.engine == "regorus")
    if cfg.engine == "regopy":
        from gateway.policy.embedded import EmbeddedEngine

        return EmbeddedEngine(
            config.resolve(cfg.path),
            cfg.decision,
            cfg.timeout_ms,
            cfg.threads,
            cfg.threads_per_agent,
            cfg.queue_timeout_ms,
        )
    from gateway.policy.opa import OpaEngine  # imported lazily: aiohttp is only needed for this engine

    return OpaEngine(cfg)
