"""Running several gateway replicas as one fleet: membership in Redis, agent-to-replica routing, fleet-wide limits.

See docs/fleet.md. Nothing here is imported unless ``[fleet]`` or ``[[limits]]`` is configured.
"""
