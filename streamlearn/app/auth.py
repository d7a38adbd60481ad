"""The HTTP API's door: bearer tokens for operator commands, and optionally for reads.

Commands (snapshot, restore, rollback, pin, unpin) change models, so they
always need ``STREAMLEARN_API_TOKEN``: without the header 401, with another
token 403, compared in constant time. A worker with no token refuses them
(403), unless development mode opens them. Reads (``/models...``,
``/metrics``) are open unless ``STREAMLEARN_API_PROTECT_READS`` is set;
``/health`` and ``/ready`` always are (probes). Kafka-side commands are
authenticated separately: signed with the command secret (codec.sign).
"""

from __future__ import annotations

import hmac
from typing import Any, Mapping

UNAUTHORIZED = "unauthorized"      # 401: no credential
FORBIDDEN = "forbidden"            # 403: a wrong one
COMMANDS_OFF = "commands_disabled"  # 403: no token configured, not in development mode


class ApiGate:
    def __init__(self, token: str, *, open_commands: bool, protect_reads: bool) -> None:
        self._token = token.encode()
        self.open_commands = open_commands
        self.protect_reads = protect_reads

    def refuse(self, request: Any, *, command: bool) -> tuple[int, dict] | None:
        """(status, JSON body) refusing the request, or None to let it through."""
        if not command and not self.protect_reads:
            return None
        if not self._token:
            if command and not self.open_commands:
                return 403, {"ok": False, "error": COMMANDS_OFF,
                             "detail": "commands over HTTP are off: this worker has no STREAMLEARN_API_TOKEN "
                                       "(STREAMLEARN_DEV=true opens them, for local development only)"}
            return None
        given = _bearer(request.headers)
        if given is None:
            return 401, {"ok": False, "error": UNAUTHORIZED,
                         "detail": "this endpoint needs 'Authorization: Bearer <STREAMLEARN_API_TOKEN>'"}
        if not hmac.compare_digest(given, self._token):
            return 403, {"ok": False, "error": FORBIDDEN, "detail": "the bearer token is not valid"}
        return None

    def peer_headers(self) -> dict[str, str]:
        """Headers for asking another worker (which shares the token)."""
        return bearer_headers(self._token.decode())


def bearer_headers(token: str) -> dict[str, str]:
    """The Authorization header clients send (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def _bearer(headers: Mapping[str, str]) -> bytes | None:
    value = headers.get("Authorization") or ""
    scheme, _, credential = value.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip().encode()
