"""Opens the engine a configuration names; the gateway and the policy commands share it."""

from __future__ import annotations

from gateway.config import Config, PolicyConfig
from gateway.policy.decision import PolicyEngine


def open_engine(cfg: PolicyConfig, config: Config) -> PolicyEngine:
    """The embedded engine (compiled and linted now) or the OPA engine (connects on first decision)."""
    if cfg.engine == "embedded":
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
