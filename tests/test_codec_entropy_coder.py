"""The range coder: exact round trips (escapes included), parity with compressai's coder, corrupt input."""

from __future__ import annotations

import numpy as np
import pytest
from codec_fixtures import entropy_bottleneck, export_tables, gaussian_conditional, torch
from vitcodec.codec import entropy_coder
from vitcodec.codec.entropy_coder import EntropyTable
from vitcodec.codec.errors import CorruptPayloadError

ans = pytest.importorskip("compressai.ans")


@pytest.fixture(scope="module")
def tables():
    return export_tables(entropy_bottleneck(8), gaussian_conditional())


@pytest.fixture(scope="module")
def y_table(tables):
    return EntropyTable(tables.y_cdf, tables.y_cdf_length, tables.y_offset)


def gaussian_symbols(rng, tables, n, max_index=63):
    indexes = rng.integers(0, max_index + 1, n).astype(np.int32)
    symbols = np.rint(rng.normal(0.0, tables.scale_table[indexes])).astype(np.int32)
    return symbols, indexes


def compressai_roundtrip(symbols, indexes, cdf, cdf_length, offset):
    args = (indexes.ravel().tolist(), cdf.tolist(), cdf_length.tolist(), offset.tolist())
    data = ans.RansEncoder().encode_with_indexes(symbols.ravel().tolist(), *args)
    return data, np.array(ans.RansDecoder().decode_with_indexes(data, *args), dtype=np.int32)


def test_exported_tables_match_compressai_buffers():
    eb, gc = entropy_bottleneck(6), gaussian_conditional()
    tables = export_tables(eb, gc)
    assert tables.z_channels == 6 and tables.scale_levels == 64
    assert np.array_equal(tables.y_offset, gc._offset.numpy())
    assert len(set(tables.z_offset.tolist())) > 1  # channels really differ


def test_round_trip_with_escapes_and_extremes(tables, y_table):
    rng = np.random.default_rng(0)
    symbols, indexes = gaussian_symbols(rng, tables, 5000)
    symbols[:8] = [2**31 - 1, -(2**31), 10**6, -(10**6), 5000, -5000, 40, -40]
    indexes[:8] = [0, 0, 5, 63, 1, 2, 0, 0]
    data = y_table.encode(symbols.reshape(50, 100), indexes.reshape(50, 100))
    decoded = y_table.decode(data, indexes.reshape(50, 100))
    assert decoded.dtype == np.int32 and decoded.shape == (50, 100)
    assert np.array_equal(decoded.ravel(), symbols)


def test_escape_boundaries_round_trip(tables, y_table):
    """Values at and around the ends of each row (the escape symbol itself is max_value)."""
    rows = np.arange(64)
    max_value = tables.y_cdf_length - 2
    values = np.stack([np.full(64, -1), np.zeros(64), max_value - 1, max_value, max_value + 1]).astype(np.int64)
    symbols = (values + tables.y_offset[rows]).astype(np.int32).ravel()
    indexes = np.tile(rows, 5).astype(np.int32)
    assert np.array_equal(y_table.decode(y_table.encode(symbols, indexes), indexes), symbols)


def test_same_symbols_as_compressai_coder_and_similar_size(tables):
    """compressai's rANS and our range coder agree on every decoded symbol (escapes included) and cost."""
    rng = np.random.default_rng(1)
    symbols, indexes = gaussian_symbols(rng, tables, 20000, max_index=40)
    symbols[::997] += 3000  # escapes in both coders
    theirs, their_decoded = compressai_roundtrip(symbols, indexes, tables.y_cdf, tables.y_cdf_length, tables.y_offset)
    table = EntropyTable(tables.y_cdf, tables.y_cdf_length, tables.y_offset)
    ours = table.encode(symbols, indexes)
    our_decoded = table.decode(ours, indexes)
    assert np.array_equal(their_decoded, symbols) and np.array_equal(our_decoded, symbols)
    assert abs(len(ours) - len(theirs)) <= 0.02 * len(theirs) + 8, (len(ours), len(theirs))


def test_z_channels_like_entropy_bottleneck(tables):
    """z: one CDF row per channel, symbols relative to the medians, cross-checked with compressai."""
    rng = np.random.default_rng(2)
    shape = (tables.z_channels, 3, 5)
    indexes = np.broadcast_to(np.arange(shape[0]).reshape(-1, 1, 1), shape).astype(np.int32)
    symbols = np.rint(rng.normal(0, 4, shape)).astype(np.int32)
    symbols[0, 0, 0] = 999  # beyond the table
    _, their_decoded = compressai_roundtrip(symbols, indexes, tables.z_cdf, tables.z_cdf_length, tables.z_offset)
    table = EntropyTable(tables.z_cdf, tables.z_cdf_length, tables.z_offset)
    ours = table.decode(table.encode(symbols, indexes), indexes)
    assert np.array_equal(ours, symbols) and np.array_equal(their_decoded.reshape(shape), symbols)


def test_z_path_matches_entropy_bottleneck_compress_decompress():
    """Through compressai's own module API: same ẑ from its strings as from our payload."""
    eb = entropy_bottleneck(8)
    tables = export_tables(eb, gaussian_conditional())
    medians = eb.quantiles[:, 0, 1].detach()
    torch.manual_seed(0)
    z = medians[None, :, None, None] + 3.0 * torch.randn(2, 8, 3, 5)
    z[0, 2, 1, 1] = medians[2] + 500.0  # an escape
    with torch.no_grad():
        their_z_hat = eb.decompress(eb.compress(z), (3, 5)).numpy()
    table = EntropyTable(tables.z_cdf, tables.z_cdf_length, tables.z_offset)
    indexes = np.broadcast_to(np.arange(8).reshape(1, -1, 1, 1), (2, 8, 3, 5))
    med = tables.z_medians.astype(np.float64).reshape(1, -1, 1, 1)
    symbols = np.rint(z.numpy().astype(np.float64) - med).astype(np.int32)
    decoded = table.decode(table.encode(symbols, indexes), indexes)
    our_z_hat = decoded.astype(np.float32) + tables.z_medians.reshape(1, -1, 1, 1)  # float32 sum, as torch
    assert np.array_equal(our_z_hat, their_z_hat)


def test_deterministic_and_tail_trimmed(tables, y_table):
    rng = np.random.default_rng(3)
    trimmed_bytes = untrimmed_bytes = 0
    for n in [0, 1, 2, 7, 30, 200]:
        for _ in range(10):
            symbols, indexes = gaussian_symbols(rng, tables, n, max_index=20)
            data = y_table.encode(symbols, indexes)
            assert data == y_table.encode(symbols, indexes)
            assert np.array_equal(y_table.decode(data, indexes), symbols)
            trimmed_bytes += len(data)
            untrimmed_bytes += 4 * -(-len(data) // 4)
    assert y_table.encode(np.zeros(0, np.int32), np.zeros(0, np.int32)) == b""
    assert trimmed_bytes < untrimmed_bytes


@pytest.mark.parametrize("n, max_index", [(entropy_coder.TRIM_MAX_SYMBOLS + 1, 0), (3000, 63)])
def test_large_messages_skip_trimming_but_round_trip(tables, y_table, n, max_index):
    """Too many symbols (first case) or too many bytes (second) for trimming to pay off."""
    rng = np.random.default_rng(4)
    symbols, indexes = gaussian_symbols(rng, tables, n, max_index=max_index)
    data = y_table.encode(symbols, indexes)
    assert len(data) % 4 == 0
    assert np.array_equal(y_table.decode(data, indexes), symbols)


def test_trailing_garbage_is_refused(tables, y_table):
    rng = np.random.default_rng(5)
    symbols, indexes = gaussian_symbols(rng, tables, 300, max_index=30)
    data = y_table.encode(symbols, indexes)
    with pytest.raises(CorruptPayloadError):
        y_table.decode(data + b"\x5a" * 12, indexes)


def test_random_payloads_raise_only_corrupt_payload_error(tables, y_table):
    rng = np.random.default_rng(6)
    symbols, indexes = gaussian_symbols(rng, tables, 400, max_index=63)
    data = bytearray(y_table.encode(symbols, indexes))
    outcomes = set()
    for trial in range(300):
        mutated = bytearray(data)
        if trial % 3 == 0:
            mutated = bytearray(rng.integers(0, 256, rng.integers(0, 2 * len(data))).astype(np.uint8).tobytes())
        elif trial % 3 == 1:
            mutated[rng.integers(len(mutated))] ^= 1 << int(rng.integers(8))
        else:
            del mutated[rng.integers(len(mutated)) :]
        try:
            out = y_table.decode(bytes(mutated), indexes)
            assert out.shape == indexes.shape and out.dtype == np.int32
            outcomes.add("decoded")
        except CorruptPayloadError:
            outcomes.add("refused")
    assert "refused" in outcomes  # most garbage decodes to *something*; the checksum is what catches it


def test_caller_errors_are_value_errors(y_table):
    with pytest.raises(ValueError):
        y_table.encode(np.zeros(3, np.int32), np.array([0, 1, 64]))
    with pytest.raises(ValueError):
        y_table.encode(np.zeros(3, np.float32), np.zeros(3, np.int32))
    with pytest.raises(ValueError):
        y_table.encode(np.zeros(2, np.int32), np.zeros(3, np.int32))
