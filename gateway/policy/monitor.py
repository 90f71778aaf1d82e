"""Monitor mode: which denials the gateway lets through, recorded as ``would_deny`` instead of enforced.

A denial is monitored when the policy's decision says ``mode: "monitor"`` (a rule on trial: the shipped router
turns a team's ``monitor_deny`` reasons into such a decision) or when a ``[[policy.monitor]]`` entry of the config
matches the request (a team, a tool, or both, by shell-style globs). Only a decision the policy made can be
monitored: the admission stage never asks here about engine failures, refused arguments, unknown or hidden items,
and identity and rate limits are refused before admission (gateway/admission.py).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from gateway.config import MonitorEntry
from gateway.policy.decision import Decision

POLICY = "policy"
"""The ``monitor`` value of a denial the policy itself marked ``mode: "monitor"``."""


class Monitor:
    def __init__(self, entries: list[MonitorEntry] | tuple[MonitorEntry, ...] = ()):
        self.entries = tuple(entries)

    def why(self, decision: Decision, team: str, action: str, server: str | None, tool: str | None) -> str | None:
        """Why this denial goes through in monitor mode (recorded as the decision's ``monitor``), or None."""
        if decision.result.get("mode") == "monitor":
            return POLICY
        name = f"{server}__{tool}" if action == "tools/call" and server and tool else None
        for i, entry in enumerate(self.entries):
            if entry.team is not None and not fnmatchcase(team, entry.team):
                continue
            if entry.tool is not None and (name is None or not fnmatchcase(name, entry.tool)):
                continue
            return describe(i, entry)
        return None


def describe(index: int, entry: MonitorEntry) -> str:
    """``policy.monitor[0] team=research tool=git__*``: the entry as the config names it."""
    parts = [f"{k}={v}" for k, v in (("team", entry.team), ("tool", entry.tool)) if v is not None]
    return f"policy.monitor[{index}] " + " ".join(parts)
