"""Bearer-token check shared by both transports (HTTP dependency, gRPC interceptor)."""

from __future__ import annotations

import secrets

from .errors import Unauthorized


def check_bearer(header: str | None, token: str | None) -> None:
    """Raise Unauthorized unless `header` is 'Bearer <token>' (no-op when no token is configured)."""
    if not token:
        return
    if not header:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip().encode(), token.encode()):
        raise Unauthorized("invalid bearer token")
