"""Domain errors of the codec.

Every way a bitstream can be unusable has its own class, so that transports (HTTP, gRPC) can map each to
a status once, and callers can catch `CodecError` to handle them all. Messages are one line for humans.
"""

from __future__ import annotations

__all__ = [
    "CodecError",
    "TruncatedStreamError",
    "BadMagicError",
    "UnsupportedVersionError",
    "IntegrityError",
    "ModelMismatchError",
    "CorruptPayloadError",
]


class CodecError(Exception):
    """Base class: the bytes cannot be decoded (nothing here means a bug in the caller's code)."""


class TruncatedStreamError(CodecError):
    """The stream ends before a field that its own header says must be there."""


class BadMagicError(CodecError):
    """The first byte is not vitcodec's: these bytes are some other format."""


class UnsupportedVersionError(CodecError):
    """A vitcodec stream, but of a format version this build cannot read."""


class IntegrityError(CodecError):
    """The checksum does not match: bytes were changed or cut off in transit."""


class ModelMismatchError(CodecError):
    """The stream was encoded for another model; decoding it would give garbage, not an error.

    `model_name` names the model the stream was sent to, when the caller chose it by name.
    """

    def __init__(self, expected_id: bytes, actual_id: bytes, model_name: str | None = None) -> None:
        self.expected_id = bytes(expected_id)
        self.actual_id = bytes(actual_id)
        self.model_name = model_name
        if model_name is None:
            message = (f"stream is for model {self.actual_id.hex()}, but this decoder holds model "
                       f"{self.expected_id.hex()}")
        else:
            message = (f"stream was encoded for model id {self.actual_id.hex()}, but model {model_name!r} has "
                       f"model id {self.expected_id.hex()}")
        super().__init__(message)

    def __reduce__(self):  # keep pickling (multiprocessing, logging handlers) working with every argument
        return (type(self), (self.expected_id, self.actual_id, self.model_name))


class CorruptPayloadError(CodecError):
    """The stream is well formed and intact, yet its content is impossible (bad range-coded data, leftovers,
    out-of-range values): written by a broken or hostile encoder."""
