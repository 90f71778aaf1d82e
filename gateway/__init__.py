"""MCP containment gateway: identity, Rego policy, containment and audit for every agent tool call."""

__version__ = "0.1.0"

# First, before any module imports the MCP SDK: its package __init__ files import what the gateway never uses.
from gateway import sdk_adapter as _sdk_adapter  # noqa: F401
