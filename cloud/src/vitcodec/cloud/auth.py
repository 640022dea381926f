"""Bearer-token checks shared by both transports (HTTP dependency and fast path, gRPC interceptor): the one
shared token (``--auth-token``) and the per-device tokens of a credentials file (``--credentials``,
`credentials.py`), either or both. A device token names its caller: the device name is the client identity
(access logs, answers, archive), preferred to an mTLS certificate's identity."""

from __future__ import annotations

import secrets
from contextvars import ContextVar
from typing import Any, NoReturn

from .credentials import FAILURE_REASONS, INVALID, MALFORMED, MISSING, CredentialStore, DeviceRefused
from .errors import Unauthorized

# The device name of the request or RPC being handled (None: no device token). Set by
# `Authenticator.authenticate` in the request's own context (uvicorn runs each HTTP request in a task with a
# fresh context, grpc.aio each RPC), read by the access logs and the gRPC servicers.
CURRENT_DEVICE: ContextVar[str | None] = ContextVar("vitcodec_device", default=None)

_MESSAGES = {
    MISSING: "missing bearer token: send 'Authorization: Bearer <token>'",
    MALFORMED: "malformed Authorization header: send 'Authorization: Bearer <token>'",
}


def check_bearer(header: str | None, token: str | None) -> None:
    """Raise Unauthorized unless `header` is 'Bearer <token>' (no-op when no token is configured)."""
    if not token:
        return
    if not header:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip().encode(), token.encode()):
        raise Unauthorized("invalid bearer token")


class Authenticator:
    """Who may call, and who is calling: the shared token and/or the credentials file, with the refusals
    counted by reason in ``vitcodec_auth_failures_total`` (never by device)."""

    def __init__(self, token: str | None = None, store: CredentialStore | None = None, metrics: Any = None) -> None:
        self.token = token or None
        self._token_bytes = token.encode() if token else None
        self.store = store
        self.enabled = self._token_bytes is not None or store is not None
        self._failures = {reason: metrics.auth_failures.labels(reason) for reason in FAILURE_REASONS} \
            if metrics is not None else {}

    @classmethod
    def from_settings(cls, settings: Any, metrics: Any = None) -> Authenticator:
        """`CredentialsError` when the credentials file cannot be used."""
        store = CredentialStore(settings.credentials) if getattr(settings, "credentials", None) else None
        return cls(settings.token, store, metrics)

    def _refuse(self, reason: str, message: str | None = None) -> NoReturn:
        counter = self._failures.get(reason)
        if counter is not None:
            counter.inc()
        raise Unauthorized(message or _MESSAGES.get(reason, "invalid bearer token"))

    async def authenticate(self, header: str | None) -> str | None:
        """The device name of the caller's token; None when it may call without one (no auth configured, or
        the shared token); `Unauthorized` otherwise. Records the name in `CURRENT_DEVICE`."""
        if not self.enabled:
            return None
        if not header:
            self._refuse(MISSING)
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            self._refuse(MALFORMED)
        if self._token_bytes is not None and secrets.compare_digest(value.encode(), self._token_bytes):
            return None
        if self.store is None:
            self._refuse(INVALID)
        try:
            name = await self.store.authenticate(value)
        except DeviceRefused as exc:
            # not of a device token's form: with a shared token configured, it is a wrong shared token; the
            # answer never says more than "invalid" (which device names exist is nobody's business)
            reason = INVALID if exc.reason == MALFORMED and self._token_bytes is not None else exc.reason
            self._refuse(reason, "invalid bearer token")
        CURRENT_DEVICE.set(name)
        return name
