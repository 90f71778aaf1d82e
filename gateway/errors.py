"""JSON-RPC error codes the gateway answers with, and ``GatewayError``, the one way a stage refuses a request.

The codes JSON-RPC and MCP define come from the SDK (``mcp.types``); the two below the gateway defines itself
are in the server-error range JSON-RPC leaves to implementations. Connectors keep their own literals: they
import nothing from ``gateway``.
"""

from __future__ import annotations

from typing import Any

from mcp.types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR

__all__ = [
    "DENIED",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "LIMITED",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "REQUEST_CANCELLED",
    "RESOURCE_NOT_FOUND",
    "UNKNOWN_TOOL",
    "UPSTREAM_FAILED",
    "GatewayError",
]

DENIED = -32001
"""Refused by policy (or before it, with the reason in the message and the decision id)."""
RESOURCE_NOT_FOUND = -32002
"""MCP's code for a resource URI no upstream serves (the SDK has no constant for it)."""
LIMITED = -32000
"""A per-agent limit was reached (requests in flight, sessions): retry later; the message names the limit."""
REQUEST_CANCELLED = -32800
"""The agent cancelled the request (the code the SDK answers a cancelled request with)."""
UNKNOWN_TOOL = INVALID_PARAMS
"""MCP answers an unknown tool or prompt name with invalid params."""
UPSTREAM_FAILED = INTERNAL_ERROR


class GatewayError(Exception):
    """An error the agent receives as a JSON-RPC error (code, message): never internal exception text."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
