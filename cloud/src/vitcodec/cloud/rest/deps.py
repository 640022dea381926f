"""FastAPI dependencies: the data plane, the settings, the client identity (device name or mTLS identity),
bearer-token auth and size-limited bodies."""

from __future__ import annotations

import zlib

from fastapi import Request

from ..dataplane import DataPlane
from ..errors import InvalidRequest, PayloadTooLarge
from ..settings import Settings


def get_plane(request: Request) -> DataPlane:
    return request.app.state.plane


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def client_identity(request: Request) -> str | None:
    """Who is calling: the device name of its token (``--credentials``, set by `require_auth`), else the mTLS
    client identity of the request's connection (certificate subject CN, else first DNS SAN, set by
    `vitcodec.cloud.tls.ClientIdentityMiddleware`); None when neither is known."""
    state = request.state
    return getattr(state, "device", None) or getattr(state, "client_identity", None)


async def require_auth(request: Request) -> None:
    """401 unless the request carries a token the server accepts (`vitcodec.cloud.auth.Authenticator`)."""
    request.state.device = await request.app.state.auth.authenticate(request.headers.get("authorization"))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body with gzip and deflate content encodings (tritonclient's request compression) undone,
    refused with 413 when the inflated body passes `limit` bytes.

    The bytes on the wire are limited once, for every route, by `BodyLimitMiddleware` (app.py).
    """
    return inflate_body(await request.body(), request.headers.get("content-encoding"), limit)


def inflate_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """`body` with its Content-Encoding (gzip, deflate, identity) undone; 413 past `limit` inflated bytes."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidRequest(f"unsupported Content-Encoding {encoding!r} (use gzip, deflate or none)")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body is over the limit of {limit} bytes")
    return out
