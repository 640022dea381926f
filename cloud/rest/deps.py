"""FastAPI dependencies: the data plane, the settings, bearer-token auth and size-limited bodies."""

from __future__ import annotations

import zlib

from fastapi import Request

from ..auth import check_bearer
from ..dataplane import DataPlane
from ..errors import InvalidRequest, PayloadTooLarge
from ..settings import Settings


def get_plane(request: Request) -> DataPlane:
    return request.app.state.plane


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def require_auth(request: Request) -> None:
    check_bearer(request.headers.get("authorization"), request.app.state.settings.token)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes; gzip and
    deflate content encodings (tritonclient's request compression) are undone within the same limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
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
