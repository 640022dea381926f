"""The container: round trips, size, and that every kind of damage raises the matching CodecError."""

from __future__ import annotations

import binascii
import random

import numpy as np
import pytest
from vitcodec.codec.bitstream import (
    FORMAT_VERSION,
    StreamHeader,
    header_size,
    looks_like_stream,
    pack_stream,
    read_stream_info,
    unpack_stream,
)
from vitcodec.codec.errors import (
    BadMagicError,
    CodecError,
    CorruptPayloadError,
    IntegrityError,
    ModelMismatchError,
    TruncatedStreamError,
    UnsupportedVersionError,
)

MODEL = bytes.fromhex("1a2b3c4d")
FMNIST = StreamHeader(model_id=MODEL, quality=2, image_size=(28, 28), latent_shape=(7, 7))


def with_crc(body: bytes) -> bytes:
    """Re-seal a hand-made body, to reach the checks that run after the checksum."""
    return body + binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "big")


@pytest.mark.parametrize(
    "header",
    [
        FMNIST,
        StreamHeader(MODEL, 0, (224, 224), (14, 14)),
        StreamHeader(MODEL, 255, (225, 301), (15, 19)),  # ceil division
        StreamHeader(MODEL, 7, (32, 48), (9, 5)),  # not derivable: written out
        StreamHeader(b"\0\0\0\0", 1, (1, 1), (1, 1)),
        StreamHeader(MODEL, 3, ((1 << 20) - 1, 3), (1000, 1)),
    ],
)
@pytest.mark.parametrize("z, y", [(b"", b""), (b"\x01\x02", b""), (b"", b"\xff"), (bytes(200), bytes(range(256)) * 3)])
def test_round_trip(header, z, y):
    data = pack_stream(header, z, y)
    assert unpack_stream(data) == (header, z, y)
    assert unpack_stream(bytearray(data), expected_model_id=header.model_id)[0] == header
    info = read_stream_info(data)
    assert (info.z_bytes, info.y_bytes) == (len(z), len(y))
    assert info.header_bytes + info.z_bytes + info.y_bytes == info.total_bytes == len(data)
    assert looks_like_stream(data) and info.format_version == FORMAT_VERSION


def test_overhead_is_12_bytes_for_fashion_mnist():
    data = pack_stream(FMNIST, b"z" * 5, b"y" * 14)
    assert header_size(data) == 12
    assert len(data) == 12 + 5 + 14
    assert header_size(pack_stream(StreamHeader(MODEL, 2, (224, 224), (14, 14)), b"z" * 300, b"y" * 4000)) == 15


def test_every_truncation_is_reported():
    data = pack_stream(FMNIST, b"zzzzz", b"y" * 14)
    for cut in range(len(data)):
        with pytest.raises((TruncatedStreamError, IntegrityError)):
            unpack_stream(data[:cut])
    for cut in range(11):  # shorter than any stream: always named as truncation
        with pytest.raises(TruncatedStreamError):
            unpack_stream(data[:cut])


def test_every_single_bit_flip_is_caught():
    data = pack_stream(StreamHeader(MODEL, 9, (100, 80), (25, 20)), bytes(range(40)), bytes(range(90, 250)))
    for position in range(len(data) * 8):
        mutated = bytearray(data)
        mutated[position // 8] ^= 1 << (position % 8)
        expected = (BadMagicError, UnsupportedVersionError) if position < 8 else IntegrityError
        with pytest.raises(expected):
            unpack_stream(bytes(mutated))


@pytest.mark.parametrize(
    "foreign",
    [b"\x89PNG\r\n\x1a\n" + bytes(20), b"\xff\xd8\xff\xe0" + bytes(20), b'{"instances": [1, 2, 3]}', b"GIF89a....."],
)
def test_foreign_bytes_are_not_a_vitcodec_stream(foreign):
    with pytest.raises(BadMagicError):
        unpack_stream(foreign)
    assert not looks_like_stream(foreign)


def test_other_versions_are_refused():
    data = bytearray(pack_stream(FMNIST, b"z", b"y"))
    for version in range(16):
        if version == FORMAT_VERSION:
            continue
        data[0] = 0xB0 | version
        with pytest.raises(UnsupportedVersionError, match=f"version {version}"):
            unpack_stream(with_crc(bytes(data[:-2])))
        assert looks_like_stream(bytes(data))  # the magic alone says "a vitcodec stream", of some version


def test_model_mismatch_names_both_ids():
    data = pack_stream(FMNIST, b"z", b"y")
    with pytest.raises(ModelMismatchError, match="1a2b3c4d") as info:
        unpack_stream(data, expected_model_id=bytes.fromhex("deadbeef"))
    assert "deadbeef" in str(info.value) and "\n" not in str(info.value)
    assert info.value.expected_id == bytes.fromhex("deadbeef") and info.value.actual_id == MODEL


def test_impossible_but_intact_headers_are_corrupt_payloads():
    base = bytes([0xB0 | FORMAT_VERSION]) + MODEL + b"\x02"
    cases = [
        base + b"\x00\x1c\x02\x00",  # height 0
        base + b"\x9c\x00\x1c\x02\x00",  # over-long varint for 28
        base + b"\x1c\x1c\x40\x00",  # latent code 64
        base + b"\x1c\x1c\x00\x00\x07\x00",  # explicit latent height 0
        base + b"\xff\xff\xff\xff\x7f\x1c\x02\x00",  # varint longer than 4 bytes
    ]
    for body in cases:
        with pytest.raises(CorruptPayloadError):
            unpack_stream(with_crc(body))
    with pytest.raises(TruncatedStreamError):
        unpack_stream(with_crc(base + b"\x1c\x1c\x02\x09"))  # z length beyond the end


def test_fuzzed_streams_raise_only_codec_errors():
    rng = random.Random(7)
    random_bytes = lambda n: bytes(rng.randrange(256) for _ in range(n))  # noqa: E731
    good = pack_stream(FMNIST, random_bytes(6), random_bytes(20))
    outcomes: dict[str, int] = {}
    for trial in range(600):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(4)
            at = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[at % len(data)] = rng.randrange(256)
            elif op == 1:
                del data[at : at + rng.randint(1, 8)]
            elif op == 2:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            else:
                data = data[:at]
        if trial % 2:  # also reach the post-checksum parser with arbitrary header bytes
            data = bytearray(with_crc(bytes([0xB0 | FORMAT_VERSION]) + bytes(data[1:-2])))
        try:
            unpack_stream(bytes(data), expected_model_id=MODEL)
            name = "ok"
        except CodecError as exc:
            name = type(exc).__name__
        outcomes[name] = outcomes.get(name, 0) + 1
    assert {"IntegrityError", "TruncatedStreamError"} <= outcomes.keys()


def test_header_takes_numpy_integers():
    header = StreamHeader(MODEL, np.uint8(2), (np.int64(28), 28), tuple(np.array([7, 7])))
    assert header == FMNIST and type(header.quality) is int


def test_header_fields_are_checked_when_built():
    with pytest.raises(ValueError):
        StreamHeader(b"abc", 1, (28, 28), (7, 7))
    with pytest.raises(ValueError):
        StreamHeader(MODEL, 256, (28, 28), (7, 7))
    with pytest.raises(ValueError):
        StreamHeader(MODEL, 1, (0, 28), (7, 7))
    with pytest.raises(ValueError):
        StreamHeader(MODEL, 1, (28, 28), (7,))
    with pytest.raises(ValueError):
        StreamHeader(MODEL, 1.0, (28, 28), (7, 7))
