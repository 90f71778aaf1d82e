"""Policy evaluation: the engines behind one interface, and the decision they return.

Every engine fails closed: an error, a timeout or a malformed result is a denial with ``error`` set.
"""

import os

# regorus's allocator (mimalloc) commits its first arena whole when the library loads, unless told not to: ~8 MB
# resident (transparent huge pages) for a policy that uses a fraction of it. Set before any module here imports
# regorus (mimalloc reads its options once, at load); an operator's own value wins. Children do not inherit it:
# every upstream process gets only the environment its config names.
os.environ.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "0")

from gateway.policy.decision import Decision, PolicyEngine, PolicyError

__all__ = ["Decision", "PolicyEngine", "PolicyError"]
