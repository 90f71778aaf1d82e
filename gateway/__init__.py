"""MCP containment gateway: identity, Rego policy, containment and audit for every agent tool call."""

__version__ = "0.1.0"
