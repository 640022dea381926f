"""LatentCodec: encode -> payloads -> decode gives the encoder's ŷ bit for bit, inside a real stream."""

from __future__ import annotations

import numpy as np
import pytest
from codec_fixtures import (
    entropy_bottleneck,
    export_tables,
    float_hs,
    gaussian_conditional,
    integer_hs,
)
from vitcodec.codec.bitstream import StreamHeader, header_size, pack_stream, unpack_stream
from vitcodec.codec.errors import CodecError, CorruptPayloadError
from vitcodec.codec.latent_codec import LatentCodec
from vitcodec.codec.tables import CodecTables

N, M = 8, 12


@pytest.fixture(scope="module")
def codec():
    tables = export_tables(entropy_bottleneck(N), gaussian_conditional())
    return LatentCodec(tables, integer_hs(float_hs(N, M), tables))


def latents(codec, shape, seed=0, spread=1.0):
    """y and z of plausible magnitude; z near the medians as a trained h_a would give."""
    rng = np.random.default_rng(seed)
    hz, wz = codec.z_shape(shape)
    z = (codec.tables.z_medians[:, None, None] + rng.normal(0, 1.5, (N, hz, wz))).astype(np.float32)
    y = rng.normal(0, 3 * spread, (M, *shape)).astype(np.float32)
    return y, z


@pytest.mark.parametrize("shape", [(7, 7), (8, 8), (1, 1), (5, 13), (14, 14)])
def test_decode_gives_the_encoders_y_hat(codec, shape):
    y, z = latents(codec, shape)
    enc = codec.encode(y, z)
    assert enc.y_hat.dtype == np.float32 and enc.y_hat.shape == (M, *shape)
    assert np.abs(enc.y_hat.astype(np.float64) - y).max() <= 0.5 + 1e-5
    y_hat = codec.decode(enc.z_payload, enc.y_payload, shape)
    assert y_hat.dtype == np.float32
    assert np.array_equal(y_hat.view(np.uint32), enc.y_hat.view(np.uint32))  # bit-exact, not just close


def test_escapes_round_trip(codec):
    y, z = latents(codec, (6, 6), seed=1)
    y[0, 0, 0], y[3, 2, 1], z[1, 0, 0] = 5000.0, -12345.0, 900.0
    enc = codec.encode(y, z)
    assert np.array_equal(codec.decode(enc.z_payload, enc.y_payload, (6, 6)), enc.y_hat)


def test_batch_decode_equals_single_decodes(codec):
    encoded = [codec.encode(*latents(codec, (7, 7), seed=s)) for s in range(4)]
    batch = codec.decode_batch([(e.z_payload, e.y_payload) for e in encoded], (7, 7))
    for e, y_hat in zip(encoded, batch):
        assert np.array_equal(y_hat, e.y_hat)
    assert codec.decode_batch([], (7, 7)).shape == (0, M, 7, 7)


def test_inside_a_stream_with_header_counted(codec):
    y, z = latents(codec, (7, 7), seed=2, spread=0.3)
    enc = codec.encode(y, z)
    model_id = codec.model_id(b"encoder-onnx-sha256")
    stream = pack_stream(StreamHeader(model_id, 2, (28, 28), (7, 7)), enc.z_payload, enc.y_payload)
    assert header_size(stream) == 12
    header, z_payload, y_payload = unpack_stream(stream, expected_model_id=model_id)
    assert np.array_equal(codec.decode(z_payload, y_payload, header.latent_shape), enc.y_hat)


def test_wrong_or_damaged_payloads_raise_codec_errors(codec):
    y, z = latents(codec, (7, 7), seed=3)
    enc = codec.encode(y, z)
    with pytest.raises(CorruptPayloadError):
        codec.decode(enc.z_payload, enc.y_payload + bytes(16), (7, 7))
    rng = np.random.default_rng(0)
    for _ in range(40):
        junk = rng.integers(0, 256, rng.integers(0, 64)).astype(np.uint8).tobytes()
        try:
            codec.decode(junk, enc.y_payload, (7, 7))
        except CodecError:
            pass


def test_checksummed_payloads_decode_without_the_leftover_reencode(codec, monkeypatch):
    """Payloads from a checksummed stream skip the leftover check: same ŷ, no re-encode, and data the range
    coder cannot decode is still refused."""
    from vitcodec.codec.entropy_coder import EntropyTable

    encoded = [codec.encode(*latents(codec, (7, 7), seed=s, spread=0.3)) for s in range(6)]
    payloads = [(e.z_payload, e.y_payload) for e in encoded]

    def no_reencode(*_args, **_kwargs):
        raise AssertionError("the leftover check re-encoded a checksummed payload")

    monkeypatch.setattr(EntropyTable, "_encode_sorted", no_reencode)
    batch = codec.decode_batch(payloads, (7, 7), checksum_verified=True)
    for e, y_hat in zip(encoded, batch):
        assert np.array_equal(y_hat, e.y_hat)
    with pytest.raises(CorruptPayloadError, match="range decoder failed"):
        codec.decode(encoded[0].z_payload, b"\xff" * 40, (7, 7), checksum_verified=True)
    with pytest.raises(AssertionError, match="re-encoded"):  # without the flag, the check still runs
        codec.decode_batch(payloads, (7, 7))


def test_caller_errors(codec):
    y, z = latents(codec, (7, 7))
    with pytest.raises(ValueError):
        codec.encode(y, z[:, :1])  # z does not match y
    with pytest.raises(ValueError):
        codec.encode(y[:3], z)
    y[0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        codec.encode(y, z)


def test_model_id_and_persistence(codec, tmp_path):
    assert len(codec.model_id()) == 4
    assert codec.model_id(b"a") != codec.model_id(b"b")
    codec.save(tmp_path / "codec.npz")
    again = LatentCodec.load(tmp_path / "codec.npz")
    assert again.model_id(b"a") == codec.model_id(b"a")
    y, z = latents(codec, (7, 7), seed=4)
    first, second = codec.encode(y, z), again.encode(y, z)
    assert (first.z_payload, first.y_payload) == (second.z_payload, second.y_payload)
    assert CodecTables.load(tmp_path / "codec.npz").fingerprint() == codec.tables.fingerprint()


def test_other_tables_give_another_model_id(codec):
    other_tables = export_tables(entropy_bottleneck(N, seed=1), gaussian_conditional())
    other = LatentCodec(other_tables, codec.hyper)
    assert other.model_id() != codec.model_id()
