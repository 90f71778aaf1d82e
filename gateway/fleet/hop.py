"""The inter-replica hop's proof: an HMAC-SHA256, with the fleet secret, over what the hop carries.

A replica that forwards a request adds one header, ``Mcp-Gateway-Hop``:
``v1;<replica>;<unix time>;<nonce>;<client address>;<hex mac>``, the MAC over method, path, query, the SHA-256
of the body, the authenticated agent's id, the forwarding replica, the time, the nonce and the client address.
The owner re-verifies the agent's own credentials (the ``Authorization`` header travels unchanged) and then
checks the hop: the MAC in constant time, the time within ``WINDOW_S``, the nonce not seen in that window, and the
agent it authenticated equal to the one the hop names. A valid hop is served where it arrives (never forwarded
again, so a disagreement between two replicas' views costs at most one hop, not a loop), and the audit sees the
agent's own address rather than the forwarding replica's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

HEADER = b"mcp-gateway-hop"
WINDOW_S = 30.0


def _mac(secret: bytes, fields: list[str], body: bytes) -> str:
    msg = "\n".join([*fields, hashlib.sha256(body).hexdigest()]).encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def sign(secret: bytes, method: str, path: str, query: str, body: bytes, agent: str, replica: str, client: str) -> str:
    ts = str(int(time.time()))
    nonce = secrets.token_hex(12)
    client = client.replace(";", "")
    mac = _mac(secret, [method, path, query, agent, replica, ts, nonce, client], body)
    return f"v1;{replica};{ts};{nonce};{client};{mac}"


class HopVerifier:
    def __init__(self, secret: bytes):
        self.secret = secret
        self._seen: dict[str, float] = {}

    def verify(self, value: str, method: str, path: str, query: str, body: bytes, agent: str) -> tuple[str, str]:
        """(forwarding replica, client address) of a valid hop; raises ``ValueError`` naming what is wrong."""
        parts = value.split(";")
        if len(parts) != 6 or parts[0] != "v1":
            raise ValueError("malformed")
        _, replica, ts, nonce, client, mac = parts
        if not ts.isdigit() or abs(time.time() - int(ts)) > WINDOW_S:
            raise ValueError("outside the replay window")
        want = _mac(self.secret, [method, path, query, agent, replica, ts, nonce, client], body)
        if not hmac.compare_digest(want, mac):
            raise ValueError("bad signature")
        now = time.monotonic()
        if len(self._seen) > 4096:
            self._seen = {n: t for n, t in self._seen.items() if t > now}
        if self._seen.get(nonce, 0.0) > now:
            raise ValueError("replayed")
        self._seen[nonce] = now + 2 * WINDOW_S
        return replica, client
