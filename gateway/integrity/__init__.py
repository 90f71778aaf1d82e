"""Tool integrity: the tool lock (``mcp-tools.lock``) and drift against it.

An upstream's tool, prompt and resource-template definitions are what the model reads and what the policy decides
on; an upstream can change them after they were reviewed (a new instruction in a description, a schema that takes
more, a ``destructiveHint`` that disappears, a new tool named like another's). The lock is the reviewed
declaration: the gateway compares every list an upstream sends with it and hides (or, in monitor mode, flags)
what differs. See docs/integrity.md.
"""
