"""Serving errors and the one table that maps every domain error to an HTTP status and a gRPC status code.

Both transports call `describe(exc)`; neither has a mapping of its own, so REST and gRPC always agree. The
status pairs themselves (and the clients' retry rules) are the wire contract of `vitcodec.wire`, shared with the
clients; this table only says which kind each exception is.
Codec errors (`vitcodec.codec.errors`) and `vitcodec.packages.ModelNotFoundError` keep their own one-line
message (what is wrong with the bytes, which model is missing); `HINTS` adds what a client can do about it.
Each concept has one class: the server raises the library's errors rather than look-alikes of its own. Anything
not in the table is a bug: 500 / INTERNAL with a generic message (the traceback is logged).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from vitcodec.codec import errors as codec
from vitcodec.packages import ModelNotFoundError
from vitcodec.wire import (
    BAD_REQUEST,
    INTERNAL,
    NOT_FOUND,
    TOO_LARGE,
    UNAUTHENTICATED,
    UNAVAILABLE,
    WRONG_MODEL,
    WireStatus,
)

__all__ = [
    "ServingError",
    "InvalidRequest",
    "ModelNotReady",
    "PayloadTooLarge",
    "Unauthorized",
    "Overloaded",
    "ShuttingDown",
    "ArchiveDisabled",
    "ImageNotFound",
    "ArchiveUnavailable",
    "ErrorInfo",
    "ERROR_TABLE",
    "describe",
]


class ServingError(Exception):
    """Base of the server's own errors; the message is shown to the client."""


class InvalidRequest(ServingError):
    """The request is malformed (wrong input name, datatype, shape, JSON, parameter)."""


class ModelNotReady(ServingError):
    """The model exists but is still loading (or failed to load)."""


class PayloadTooLarge(ServingError):
    """The request body is over the configured limit."""


class Unauthorized(ServingError):
    """A bearer token is required and is missing or wrong."""


class Overloaded(ServingError):
    """The model's queue is full: retry later."""


class ShuttingDown(ServingError):
    """The server is draining for shutdown and takes no new work."""


class ArchiveDisabled(ServingError):
    """An archive route was called on a server started without ``--archive``."""


class ImageNotFound(ServingError):
    """No archived image has this id (never classified, deleted, or removed by retention)."""


class ArchiveUnavailable(ServingError):
    """The archive cannot be read or written right now (its file, its disk)."""


@dataclass(frozen=True)
class ErrorInfo:
    http_status: int
    grpc_code: grpc.StatusCode
    message: str

    @property
    def code_name(self) -> str:
        return self.grpc_code.name


# exception class -> its kind of failure (HTTP status, gRPC code). Looked up along the exception's MRO: the
# most specific wins.
ERROR_TABLE: dict[type[Exception], WireStatus] = {
    # the bytes are not a usable stream
    codec.CodecError: BAD_REQUEST,
    codec.TruncatedStreamError: BAD_REQUEST,
    codec.BadMagicError: BAD_REQUEST,
    codec.UnsupportedVersionError: BAD_REQUEST,
    codec.IntegrityError: BAD_REQUEST,
    codec.CorruptPayloadError: BAD_REQUEST,
    # a good stream, sent to the wrong model
    codec.ModelMismatchError: WRONG_MODEL,
    # the request itself
    InvalidRequest: BAD_REQUEST,
    PayloadTooLarge: TOO_LARGE,
    Unauthorized: UNAUTHENTICATED,
    # the model
    ModelNotFoundError: NOT_FOUND,  # no served model has this name, version or id
    ModelNotReady: UNAVAILABLE,
    # the server
    Overloaded: UNAVAILABLE,
    ShuttingDown: UNAVAILABLE,
    # the archive
    ArchiveDisabled: NOT_FOUND,
    ImageNotFound: NOT_FOUND,
    ArchiveUnavailable: UNAVAILABLE,
}

# what a client of the server can do about an error, added to the library's own message
HINTS: dict[type[BaseException], str] = {
    codec.ModelMismatchError: "send it to the model that made it, or omit the model name to route by the stream's "
                              "header",
}


def describe(exc: BaseException) -> ErrorInfo:
    """The status pair and client-facing message for an exception."""
    for cls in type(exc).__mro__:
        entry = ERROR_TABLE.get(cls)
        if entry is not None:
            status, code = entry
            message = str(exc) or cls.__name__
            hint = next((h for c, h in HINTS.items() if isinstance(exc, c)), None)
            return ErrorInfo(status, code, f"{message}; {hint}" if hint else message)
    status, code = INTERNAL
    return ErrorInfo(status, code, f"internal error ({type(exc).__name__}); see the server log")


def is_known(exc: BaseException) -> bool:
    """True when the table maps the exception (anything else is a bug worth a traceback in the log)."""
    return any(cls in ERROR_TABLE for cls in type(exc).__mro__)
