"""Policy from OPA bundles: poll a bundle server, verify what it serves, and hand each new revision to the policy
reload (tests-gated swap). ``settings`` validates ``[policy] bundle_*``; ``archive`` unpacks safely; ``signing``
checks OPA's ``.signatures.json``; ``poller`` is the lifecycle (start, poll, stop)."""
