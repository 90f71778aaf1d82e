"""Upstream transports (stdio processes the gateway supervises, remote streamable HTTP servers)."""
