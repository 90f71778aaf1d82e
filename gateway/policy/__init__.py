"""Policy evaluation: the engines behind one interface, and the decision they return.

Every engine fails closed: an error, a timeout or a malformed result is a denial with ``error`` set.
"""

from gateway.policy.decision import Decision, PolicyEngine, PolicyError

__all__ = ["Decision", "PolicyEngine", "PolicyError"]
