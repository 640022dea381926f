"""The vitcodec container: a tiny, versioned, self-describing header around the two range-coded payloads.

Layout (format version 1; byte by byte in ``docs/bitstream.md``)::

    0xB1 | model id (4) | quality (1) | H, W (LEB128) | latent code (1) [h, w (LEB128)] | len(z) (LEB128)
         | z payload | y payload | CRC-16 (2, big-endian)

For a 28x28 image with a 4x-down encoder the overhead is 12 bytes. The y payload has no length field: it is
whatever lies between the z payload and the checksum, which saves a byte on every stream; the price is that a
stream cut inside its payloads is reported as a checksum failure (`IntegrityError`), not as truncation.
"""

from __future__ import annotations

import binascii
import operator
from dataclasses import dataclass
from typing import SupportsIndex

from .errors import (
    BadMagicError,
    CorruptPayloadError,
    IntegrityError,
    ModelMismatchError,
    TruncatedStreamError,
    UnsupportedVersionError,
)

__all__ = [
    "FORMAT_VERSION",
    "MODEL_ID_BYTES",
    "StreamHeader",
    "StreamInfo",
    "pack_stream",
    "unpack_stream",
    "read_stream_info",
    "header_size",
    "looks_like_stream",
    "leb128",
]

FORMAT_VERSION = 1
MODEL_ID_BYTES = 4

_MAGIC_NIBBLE = 0xB  # high nibble of byte 0; no common format (ASCII, PNG, JPEG, gzip, zip) starts with 0xB_
_CRC_BYTES = 2
_CRC_INIT = 0xFFFF  # CRC-16/CCITT-FALSE: a non-zero start makes leading zero bytes count
_MAX_VARINT_BYTES = 4  # 28 bits: any size or length we can meet
_MAX_DIM = (1 << 20) - 1  # image and latent sides
_MAX_LATENT_SHIFT = 31  # latent code 1..31 means h = ceil(H / 2**code), w = ceil(W / 2**code)
# byte 0 + id + quality + H + W + latent code + len(z) + CRC, every varint one byte long
_MIN_STREAM_BYTES = 1 + MODEL_ID_BYTES + 1 + 1 + 1 + 1 + 1 + _CRC_BYTES


@dataclass(frozen=True)
class StreamHeader:
    """What a decoder must know besides the payloads.

    model_id: first 4 bytes of the SHA-256 over the codec tables, integer h_s and encoder (see
    `LatentCodec.model_id`); 32 bits is plenty to refuse a stream made for another model.
    image_size: original (H, W) before any padding, so the cloud can crop a reconstruction.
    latent_shape: (h, w) of y; z is (ceil(h/4), ceil(w/4)) for the hyperprior.
    """

    model_id: bytes
    quality: int
    image_size: tuple[int, int]
    latent_shape: tuple[int, int]

    def __post_init__(self) -> None:
        if not isinstance(self.model_id, (bytes, bytearray)) or len(self.model_id) != MODEL_ID_BYTES:
            raise ValueError(f"model_id must be {MODEL_ID_BYTES} bytes, got {self.model_id!r}")
        object.__setattr__(self, "model_id", bytes(self.model_id))
        quality = _as_int(self.quality)
        if quality is None or not 0 <= quality <= 255:
            raise ValueError(f"quality must be an int in 0..255, got {self.quality!r}")
        object.__setattr__(self, "quality", quality)
        for name in ("image_size", "latent_shape"):
            value = tuple(_as_int(v) for v in getattr(self, name))
            if len(value) != 2 or not all(v is not None and 1 <= v <= _MAX_DIM for v in value):
                raise ValueError(f"{name} must be two ints in 1..{_MAX_DIM}, got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)


def _as_int(value: object) -> int | None:
    """Python int of any integer type (numpy's included); None for anything else, bools too."""
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


@dataclass(frozen=True)
class StreamInfo:
    """Sizes of a parsed stream, so rate reports can count the container honestly.

    header_bytes counts every byte that is not payload (header fields and the trailing checksum).
    """

    header: StreamHeader
    header_bytes: int
    z_bytes: int
    y_bytes: int
    total_bytes: int
    format_version: int = FORMAT_VERSION  # the low nibble of byte 0


# --- LEB128 -------------------------------------------------------------------------------------------


def leb128(value: int) -> bytes:
    """Unsigned LEB128 (7 bits a byte, least significant first, high bit = more follows), the one varint of
    the project: the stream header's fields, and protobuf's varints in `exact_gemm.matmul_integer_model`."""
    if value < 0:
        raise ValueError(f"LEB128 varints are unsigned, got {value}")
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _put_varint(out: bytearray, value: int) -> None:
    if value < 0 or value >= 1 << (7 * _MAX_VARINT_BYTES):
        raise ValueError(f"value {value} does not fit a {_MAX_VARINT_BYTES}-byte LEB128 varint")
    out += leb128(value)


def _get_varint(data: bytes, pos: int, end: int, field: str) -> tuple[int, int]:
    """Read one varint from data[pos:end]; returns (value, next position)."""
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= end:
            raise TruncatedStreamError(f"stream ends inside the {field} field (at byte {pos + i})")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise CorruptPayloadError(f"{field} field is an over-long varint (non-canonical encoding)")
            return value, pos + i + 1
    raise CorruptPayloadError(f"{field} field is longer than {_MAX_VARINT_BYTES} bytes")


# --- latent geometry ----------------------------------------------------------------------------------


def _ceil_shift(size: int, shift: int) -> int:
    return -(-size >> shift)


def _latent_code(image_size: tuple[int, int], latent_shape: tuple[int, int]) -> int:
    """Smallest shift s with latent == ceil(image / 2**s), or 0 when the shape must be written out."""
    for shift in range(1, _MAX_LATENT_SHIFT + 1):
        if (_ceil_shift(image_size[0], shift), _ceil_shift(image_size[1], shift)) == latent_shape:
            return shift
    return 0


# --- checksum -----------------------------------------------------------------------------------------


def _crc16(data: bytes | bytearray | memoryview) -> int:
    return binascii.crc_hqx(data, _CRC_INIT)


# --- public API ---------------------------------------------------------------------------------------


def pack_stream(header: StreamHeader, z_payload: bytes, y_payload: bytes) -> bytes:
    """Frame the payloads with the header and checksum; the exact inverse of `unpack_stream`."""
    out = bytearray()
    out.append((_MAGIC_NIBBLE << 4) | FORMAT_VERSION)
    out += header.model_id
    out.append(header.quality)
    _put_varint(out, header.image_size[0])
    _put_varint(out, header.image_size[1])
    code = _latent_code(header.image_size, header.latent_shape)
    out.append(code)
    if code == 0:
        _put_varint(out, header.latent_shape[0])
        _put_varint(out, header.latent_shape[1])
    _put_varint(out, len(z_payload))
    out += z_payload
    out += y_payload
    out += _crc16(out).to_bytes(_CRC_BYTES, "big")
    return bytes(out)


def _check_lead_byte(data: bytes) -> None:
    if not data:
        raise TruncatedStreamError("empty stream")
    lead = data[0]
    if lead >> 4 != _MAGIC_NIBBLE:
        raise BadMagicError(f"not a vitcodec stream (first byte 0x{lead:02x}, expected 0x{_MAGIC_NIBBLE:x}_)")
    if lead & 0x0F != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"vitcodec stream format version {lead & 0x0F}; this build reads version {FORMAT_VERSION}"
        )


def _parse(data: bytes, expected_model_id: bytes | None) -> tuple[StreamHeader, int, int, int]:
    """Validate and parse; returns (header, header end, z end, y end)."""
    data = bytes(data)
    _check_lead_byte(data)
    if len(data) < _MIN_STREAM_BYTES:
        raise TruncatedStreamError(
            f"stream has {len(data)} bytes; the smallest vitcodec stream has {_MIN_STREAM_BYTES}"
        )
    body_end = len(data) - _CRC_BYTES
    stored = int.from_bytes(data[body_end:], "big")
    if _crc16(memoryview(data)[:body_end]) != stored:
        raise IntegrityError("checksum mismatch: the stream was corrupted or truncated in transit")

    # From here on the bytes are what the encoder wrote; inconsistencies mean a broken encoder.
    model_id = data[1 : 1 + MODEL_ID_BYTES]
    quality = data[1 + MODEL_ID_BYTES]
    pos = 2 + MODEL_ID_BYTES
    height, pos = _get_varint(data, pos, body_end, "image height")
    width, pos = _get_varint(data, pos, body_end, "image width")
    if pos >= body_end:
        raise TruncatedStreamError("stream ends before the latent shape field")
    code = data[pos]
    pos += 1
    if code == 0:
        lat_h, pos = _get_varint(data, pos, body_end, "latent height")
        lat_w, pos = _get_varint(data, pos, body_end, "latent width")
    elif code <= _MAX_LATENT_SHIFT:
        lat_h, lat_w = _ceil_shift(height, code), _ceil_shift(width, code)
    else:
        raise CorruptPayloadError(f"latent shape code {code} is out of range (0..{_MAX_LATENT_SHIFT})")
    z_len, pos = _get_varint(data, pos, body_end, "z payload length")
    if pos + z_len > body_end:
        raise TruncatedStreamError(f"z payload of {z_len} bytes runs past the end of the stream")
    try:
        header = StreamHeader(model_id, quality, (height, width), (lat_h, lat_w))
    except ValueError as exc:
        raise CorruptPayloadError(f"impossible header: {exc}") from None
    if expected_model_id is not None and header.model_id != bytes(expected_model_id):
        raise ModelMismatchError(bytes(expected_model_id), header.model_id)
    return header, pos, pos + z_len, body_end


def unpack_stream(data: bytes, expected_model_id: bytes | None = None) -> tuple[StreamHeader, bytes, bytes]:
    """Check magic, version, checksum and lengths, then split the stream into (header, z, y).

    Raises only `CodecError` subclasses on bad input; `ModelMismatchError` when `expected_model_id` is given
    and differs (checked after the checksum, so a flipped id bit reads as corruption, not as another model).
    """
    header, head_end, z_end, y_end = _parse(data, expected_model_id)
    return header, bytes(data[head_end:z_end]), bytes(data[z_end:y_end])


def read_stream_info(data: bytes) -> StreamInfo:
    """Parse and validate a stream and report its byte budget."""
    header, head_end, z_end, y_end = _parse(data, None)
    return StreamInfo(
        header=header,
        header_bytes=head_end + len(data) - y_end,
        z_bytes=z_end - head_end,
        y_bytes=y_end - z_end,
        total_bytes=len(data),
        format_version=data[0] & 0x0F,
    )


def header_size(data: bytes) -> int:
    """Bytes of `data` that are container, not payload (header fields plus checksum)."""
    return read_stream_info(data).header_bytes


def looks_like_stream(data: bytes) -> bool:
    """True when byte 0 carries vitcodec's magic nibble (any format version): cheap, checks nothing else.

    Lets a caller holding "an image or a bitstream" tell them apart without parsing either.
    """
    return bool(data) and data[0] >> 4 == _MAGIC_NIBBLE
