"""Golden bytes: any change to the format, the coder's output or the integer h_s shows up here.

Torch-free on purpose: these are the guarantees an edge install relies on. If one of them changes on
purpose, bump the bitstream FORMAT_VERSION (and say why in docs/bitstream.md), then update the constants.
"""

from __future__ import annotations

import hashlib

import numpy as np
from vitcodec.codec.bitstream import StreamHeader, pack_stream, unpack_stream
from vitcodec.codec.entropy_coder import EntropyTable
from vitcodec.codec.integer_hyper_synthesis import FixedLayer, IntegerHyperSynthesis

MODEL = bytes.fromhex("1a2b3c4d")


def small_table() -> EntropyTable:
    cdf = np.zeros((2, 6), np.int32)
    cdf[0, :4] = [0, 30000, 60000, 65536]
    cdf[1, :6] = [0, 1000, 20000, 45000, 64000, 65536]
    return EntropyTable(cdf, np.array([4, 6]), np.array([-1, -2]))


SYMBOLS = np.array([0, 1, -1, 2, 0, 0, -3, 40, -1, 1, 1, 0, 0, 2, -2, 7], np.int32)  # 40, 7, -3: escapes
INDEXES = np.array([0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 1], np.int32)
PAYLOAD = bytes.fromhex("a5182112e5c24ed4f5b2")


def test_range_coder_output_is_fixed():
    table = small_table()
    assert table.encode(SYMBOLS, INDEXES) == PAYLOAD
    assert np.array_equal(table.decode(PAYLOAD, INDEXES), SYMBOLS)


def test_container_bytes_are_fixed():
    stream = pack_stream(StreamHeader(MODEL, 2, (28, 28), (7, 7)), b"\x01\x02\x03", PAYLOAD)
    assert stream.hex() == "b11a2b3c4d021c1c0203010203a5182112e5c24ed4f5b229e7"
    explicit = pack_stream(StreamHeader(MODEL, 200, (300, 17), (40, 3)), b"", b"\xff")
    assert explicit.hex() == "b11a2b3c4dc8ac021100280300ff5b7d"
    assert unpack_stream(explicit)[0].latent_shape == (40, 3)


# --- integer h_s -----------------------------------------------------------------------------------------


def tiny_hs() -> IntegerHyperSynthesis:
    w1 = (np.arange(2 * 3 * 5 * 5).reshape(2, 3, 5, 5) * 7919 % 2001 - 1000).astype(np.int64)
    w2 = (np.arange(4 * 3 * 3 * 3).reshape(4, 3, 3, 3) * 104729 % 4001 - 2000).astype(np.int64)
    layers = [
        FixedLayer("deconv", w1, np.array([5, -3000, 70000]), stride=2, padding=2, output_padding=1),
        FixedLayer("relu"),
        FixedLayer("conv", w2, np.array([10**6, -(10**6), 123456, -7]), stride=1, padding=1),
    ]
    table = np.exp(np.linspace(np.log(0.11), np.log(256), 64)).astype(np.float32).astype(np.float64)
    return IntegerHyperSynthesis(layers, weight_bits=10, act_bits=8, act_limit=1024, scale_table=table)


def tiny_z() -> np.ndarray:
    return (np.arange(2 * 3 * 3).reshape(1, 2, 3, 3) * 37 % 29 - 14).astype(np.int64) << 8


def naive_reference(hs: IntegerHyperSynthesis, z: np.ndarray) -> np.ndarray:
    """The definitions, in Python integers, one multiply-add at a time: no BLAS, no floats."""
    deconv, _, conv = hs.layers
    x = z[0].tolist()
    c_in, c_mid, k, _ = deconv.weight.shape
    size = len(x[0])
    out_size = (size - 1) * 2 - 4 + k + 1
    mid = [[[int(deconv.bias[o]) for _ in range(out_size)] for _ in range(out_size)] for o in range(c_mid)]
    for c in range(c_in):
        for o in range(c_mid):
            for i in range(size):
                for j in range(size):
                    for ty in range(k):
                        for tx in range(k):
                            oy, ox = i * 2 - 2 + ty, j * 2 - 2 + tx
                            if 0 <= oy < out_size and 0 <= ox < out_size:
                                mid[o][oy][ox] += x[c][i][j] * int(deconv.weight[c, o, ty, tx])
    half = 1 << (hs.weight_bits - 1)
    limit = hs.act_limit << hs.act_bits
    mid = [[[min(max((v + half) >> hs.weight_bits, 0), limit) for v in row] for row in ch] for ch in mid]
    c_out = conv.weight.shape[0]
    out = np.zeros((c_out, out_size, out_size), dtype=np.int64)
    for o in range(c_out):
        for oy in range(out_size):
            for ox in range(out_size):
                acc = int(conv.bias[o])
                for c in range(c_mid):
                    for ty in range(3):
                        for tx in range(3):
                            iy, ix = oy - 1 + ty, ox - 1 + tx
                            if 0 <= iy < out_size and 0 <= ix < out_size:
                                acc += mid[c][iy][ix] * int(conv.weight[o, c, ty, tx])
                out[o, oy, ox] = (acc + half) >> hs.weight_bits
    return out


def test_integer_hs_equals_the_naive_definition():
    hs, z = tiny_hs(), tiny_z()
    reference = naive_reference(hs, z)
    out = hs.forward(z)
    assert np.array_equal(out.means_fixed[0], reference[hs.M :])
    scales = reference[: hs.M] / 2.0**hs.act_bits
    expected = [sum(1 for t in hs.scale_table[:-1] if t < max(s, np.float32(0.11))) for s in scales.ravel()]
    assert out.scale_indexes.ravel().tolist() == expected


def test_integer_hs_output_is_fixed():
    out = tiny_hs().forward(tiny_z(), (5, 6))
    digest = hashlib.sha256(out.scale_indexes.astype("<i4").tobytes() + out.means_fixed.astype("<i8").tobytes())
    assert digest.hexdigest() == "7eff653130ccab30c4d92fb5f22cca0e8df09c9dcd0ce656ff3d180e25845586"
