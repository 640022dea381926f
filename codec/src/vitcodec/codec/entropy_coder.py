"""The one range coder that edge and cloud share, fed with compressai's integer CDF tables.

Why constriction's queue `RangeEncoder`: it is first-in-first-out, so the decoder reads symbols in the order
they were written (the stack `AnsCoder` would need a reversed encode order); it ships as a small wheel
without torch; and its models are built from our integer CDFs, so coding never depends on float maths that
could differ between machines.

Semantics follow compressai's `encode_with_indexes`. For a symbol s coded with CDF row i:
``value = s - offset[i]``; row i codes the values ``0 .. max_value - 1`` directly, with
``max_value = cdf_length[i] - 2``; ``max_value`` itself is the escape symbol (it carries the tail mass).
A value outside ``[0, max_value)`` is sent as the escape symbol followed by the folded value
``raw = -2*value - 1`` (value < 0) or ``raw = 2*(value - max_value)`` (value >= max_value), coded as
its bit length k (uniform over 0..34) and then its k-1 bits below the leading one (uniform, in chunks of
at most 16 bits, least significant first).

Order, so that a few vectorised calls code a whole latent: all symbols of row 0 in raster order, then row 1,
and so on (rows that are not used are skipped); then the bit lengths of all escapes in that same order; then
the first 16-bit mantissa chunk of every escape that has one, then the second chunk, then the third. The
decoder knows the indexes, so it can follow the same order.

Payload bytes are the coder's 32-bit words, big-endian. constriction ends a message on a word boundary;
the decoder pads a short last word (and missing words) with zeros, so for small messages `encode` rounds
the tail up to the shortest byte string that still decodes (checked by decoding), which saves about
2 bytes per payload: much of a 25-byte image. Decoders accept any tail that decodes, trimmed or not, as
long as the payload is no longer than the whole-word message of its symbols.
"""

from __future__ import annotations

from dataclasses import dataclass

import constriction
import numpy as np

from .errors import CorruptPayloadError

__all__ = ["DecodePlan", "EntropyTable", "TRIM_MAX_BYTES", "TRIM_MAX_SYMBOLS"]

# constriction is a compiled extension without stubs: pyright cannot see its submodules
_model = constriction.stream.model  # pyright: ignore[reportAttributeAccessIssue]
_queue = constriction.stream.queue  # pyright: ignore[reportAttributeAccessIssue]

# Byte-exact tails for messages of at most this many bytes and symbols: where 2 bytes matter (a 28x28 image
# is ~25 bytes) and the price, about four extra decodes, is small (~2 ms for 7x7x128 symbols).
TRIM_MAX_BYTES = 256
TRIM_MAX_SYMBOLS = 16384
_ESC_LENGTHS = 35  # bit lengths 0..34 cover every folded int32 - int32 value
_CHUNK_BITS = 16
_MAX_CHUNKS = 3  # ceil(33 mantissa bits / 16)
_INT32 = np.iinfo(np.int32)


def _bit_length(raw: np.ndarray) -> np.ndarray:
    """Exact bit lengths of non-negative int64 values below 2**53 (frexp is exact for them)."""
    return np.frexp(raw.astype(np.float64))[1].astype(np.int64)


def _mantissa_layout(lengths: np.ndarray) -> list[np.ndarray]:
    """For every chunk position, the number of mantissa bits each escape has there (0: none)."""
    bits = np.maximum(lengths - 1, 0)
    return [np.clip(bits - _CHUNK_BITS * c, 0, _CHUNK_BITS) for c in range(_MAX_CHUNKS)]


@dataclass(frozen=True)
class DecodePlan:
    """Coding order of one index array: symbols sorted by CDF row (stable), and the row runs."""

    shape: tuple[int, ...]
    order: np.ndarray
    idx_sorted: np.ndarray
    runs: list[tuple[int, int, int]]


class EntropyTable:
    """CDF rows with their constriction models built once and reused for every symbol.

    cdf (R, L) int32 with row i valid up to cdf_length[i] (last entry 2**16), offset (R,): compressai's
    `_quantized_cdf`, `_cdf_length`, `_offset`. Probabilities are the integer differences of the CDF
    (exact in float64), so the models depend on the table integers only.
    """

    def __init__(self, cdf: np.ndarray, cdf_length: np.ndarray, offset: np.ndarray) -> None:
        cdf = np.asarray(cdf)
        cdf_length = np.asarray(cdf_length).astype(np.int64).ravel()
        offset = np.asarray(offset).astype(np.int64).ravel()
        if cdf.ndim != 2 or cdf_length.shape != (cdf.shape[0],) or offset.shape != (cdf.shape[0],):
            raise ValueError(f"cdf must be (R, L) with R lengths and offsets; got {cdf.shape}, "
                             f"{cdf_length.shape}, {offset.shape}")
        if cdf_length.size and (cdf_length.min() < 3 or cdf_length.max() > cdf.shape[1]):
            raise ValueError(f"cdf lengths must lie in 3..{cdf.shape[1]}")
        self._pmfs = [np.diff(cdf[i, : n].astype(np.float64)) for i, n in enumerate(cdf_length.tolist())]
        if any(np.any(p <= 0) for p in self._pmfs):
            raise ValueError("every CDF row must be strictly increasing over its valid length")
        self._offset = offset
        self._max_value = cdf_length - 2
        self._models: list[object | None] = [None] * cdf.shape[0]

    @property
    def rows(self) -> int:
        return len(self._models)

    def _row_model(self, i: int) -> object:
        model = self._models[i]
        if model is None:
            model = _model.Categorical(self._pmfs[i], perfect=False)
            self._models[i] = model
        return model

    def _groups(self, indexes: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """Permutation that sorts symbols by row (stable: raster order within a row), and the row runs."""
        if indexes.size and (indexes.min() < 0 or indexes.max() >= self.rows):
            raise ValueError(f"indexes must lie in 0..{self.rows - 1}")
        # stable sort; on 16-bit keys numpy uses a radix sort (several times faster for a 28x28 image's y)
        keys = indexes.astype(np.int16) if self.rows <= np.iinfo(np.int16).max else indexes
        order = np.argsort(keys, kind="stable")
        ordered = indexes[order]
        if not ordered.size:
            return order, []
        cuts = np.flatnonzero(np.diff(ordered)) + 1
        starts = np.concatenate(([0], cuts))
        ends = np.concatenate((cuts, [ordered.size]))
        runs = list(zip(ordered[starts].tolist(), starts.tolist(), ends.tolist()))  # Python ints, in one pass
        return order, runs

    # --- encoding -------------------------------------------------------------------------------------

    def encode(self, symbols: np.ndarray, indexes: np.ndarray) -> bytes:
        """Code integer `symbols`, each with the CDF row named by `indexes` (same shape)."""
        symbols, indexes = np.asarray(symbols), np.asarray(indexes)
        if symbols.shape != indexes.shape:
            raise ValueError(f"symbols {symbols.shape} and indexes {indexes.shape} differ in shape")
        if symbols.dtype.kind not in "iu" or indexes.dtype.kind not in "iu":
            raise ValueError("symbols and indexes must be integer arrays")
        sym = symbols.ravel().astype(np.int64)
        if sym.size and (sym.min() < _INT32.min or sym.max() > _INT32.max):
            raise ValueError("symbols must fit int32")
        idx = indexes.ravel().astype(np.int64)
        order, runs = self._groups(idx)
        sym_sorted, idx_sorted = sym[order], idx[order]
        data = self._encode_sorted(sym_sorted, idx_sorted, runs)
        if len(data) <= TRIM_MAX_BYTES and sym.size <= TRIM_MAX_SYMBOLS:
            data = self._trim_tail(data, sym_sorted, idx_sorted, runs)
        return data

    def _encode_sorted(self, sym_sorted: np.ndarray, idx_sorted: np.ndarray, runs: list[tuple[int, int, int]]) -> bytes:
        """Word-aligned message for symbols already in coding order (by row, raster order within)."""
        value = sym_sorted - self._offset[idx_sorted]
        max_value = self._max_value[idx_sorted]
        below, above = value < 0, value >= max_value
        escape = below | above
        coded = np.where(escape, max_value, value).astype(np.int32)
        raw = np.where(below, -2 * value - 1, 2 * (value - max_value))[escape]

        encoder = _queue.RangeEncoder()
        for row, start, end in runs:
            if end - start == 1:  # the scalar form: several times cheaper than an array of one (z's rows)
                encoder.encode(int(coded[start]), self._row_model(row))
            else:
                encoder.encode(coded[start:end], self._row_model(row))
        if raw.size:
            lengths = _bit_length(raw)
            encoder.encode(lengths.astype(np.int32), _model.Uniform(_ESC_LENGTHS))
            rest = raw - np.where(lengths > 0, np.left_shift(1, np.maximum(lengths - 1, 0)), 0)
            chunks, sizes = [], []
            for c, nbits in enumerate(_mantissa_layout(lengths)):
                has = nbits > 0
                chunks.append((rest[has] >> (_CHUNK_BITS * c)) & ((1 << nbits[has]) - 1))
                sizes.append(1 << nbits[has])
            chunk_sym = np.concatenate(chunks).astype(np.int32)
            if chunk_sym.size:
                encoder.encode(chunk_sym, _model.Uniform(), np.concatenate(sizes).astype(np.int32))
        return encoder.get_compressed().astype(">u4").tobytes()

    def _trim_tail(
        self, data: bytes, sym_sorted: np.ndarray, idx_sorted: np.ndarray, runs: list[tuple[int, int, int]]
    ) -> bytes:
        """Shortest rounding-up of the final bytes that still decodes to the same symbols.

        constriction seals a message with the smallest word-aligned point of the final coding interval.
        Rounding that point up to a multiple of 256**k stays inside the interval for every k up to some
        limit and leaves it beyond (the rounded values only grow), so a binary search over k finds the
        limit; every accepted candidate is proven by a full decode.
        """
        value = int.from_bytes(data, "big")

        def decodes(k: int) -> bytes | None:
            size = len(data) - k
            rounded = -(-value // (1 << (8 * k)))
            if rounded >= 1 << (8 * size):
                return None
            cut = rounded.to_bytes(size, "big") if size else b""
            try:
                decoded, _ = self._decode_sorted(cut, idx_sorted, runs)
            except CorruptPayloadError:
                return None
            return cut if np.array_equal(decoded, sym_sorted) else None

        best, lo, hi = data, 0, min(len(data), 8) + 1  # k = lo is known to work, k = hi assumed not to
        while hi - lo > 1:
            mid = (lo + hi) // 2
            cut = decodes(mid)
            if cut is None:
                hi = mid
            else:
                best, lo = cut, mid
        return best

    # --- decoding -------------------------------------------------------------------------------------

    def decode(self, data: bytes, indexes: np.ndarray, *, check_leftover: bool = True) -> np.ndarray:
        """Inverse of `encode`: int32 symbols shaped like `indexes`. Bad data raises `CorruptPayloadError`.

        Leftover check (``check_leftover``): a payload may not be longer than the word-aligned message of the
        symbols it decodes to. constriction's `maybe_exhausted` proves that for free on untrimmed messages;
        trimmed ones (nearly every small image's) are re-encoded, which costs about a third of the decode.
        Callers whose payloads come out of a stream with a verified checksum pass False: the checksum already
        catches corruption in transit, and bytes appended by an encoder that also forged the checksum can
        only change what that encoder's own stream means.
        """
        return self.decode_planned(data, self.plan(indexes), check_leftover=check_leftover)

    def plan(self, indexes: np.ndarray) -> DecodePlan:
        """The coding order for `indexes`, reusable for every payload coded with the same indexes (e.g. z,
        whose CDF row is its channel): saves the sort per payload."""
        indexes = np.asarray(indexes)
        if indexes.dtype.kind not in "iu":
            raise ValueError("indexes must be an integer array")
        idx = indexes.ravel().astype(np.int64)
        order, runs = self._groups(idx)
        return DecodePlan(indexes.shape, order, idx[order], runs)

    def decode_planned(self, data: bytes, plan: DecodePlan, *, check_leftover: bool = True) -> np.ndarray:
        """`decode` with the order from `plan`."""
        data = bytes(data)
        sym_sorted, exhausted = self._decode_sorted(data, plan.idx_sorted, plan.runs)
        if check_leftover and not exhausted and \
                len(data) > len(self._encode_sorted(sym_sorted, plan.idx_sorted, plan.runs)):
            raise CorruptPayloadError(f"payload of {len(data)} bytes has data left after its last symbol")
        out = np.empty(plan.idx_sorted.size, dtype=np.int32)
        out[plan.order] = sym_sorted
        return out.reshape(plan.shape)

    def _decode_sorted(
        self, data: bytes, idx_sorted: np.ndarray, runs: list[tuple[int, int, int]]
    ) -> tuple[np.ndarray, bool]:
        """Symbols in coding order (int64) and whether constriction sees the data as used up."""
        words = np.frombuffer(data + b"\0" * (-len(data) % 4), dtype=">u4").astype(np.uint32)
        try:
            decoder = _queue.RangeDecoder(words)
            decode, row_model = decoder.decode, self._row_model  # bound once: this loop runs ~40 times a stream
            coded = np.empty(idx_sorted.size, dtype=np.int64)
            for row, start, end in runs:
                if end - start == 1:  # as in `_encode_sorted`: the scalar form for runs of one symbol
                    coded[start] = decode(row_model(row))
                else:
                    coded[start:end] = decode(row_model(row), end - start)
            max_value = self._max_value[idx_sorted]
            escape = coded == max_value
            raw = np.zeros(int(escape.sum()), dtype=np.int64)
            if raw.size:
                lengths = decoder.decode(_model.Uniform(_ESC_LENGTHS), raw.size).astype(np.int64)
                layout = _mantissa_layout(lengths)
                sizes = np.concatenate([1 << nbits[nbits > 0] for nbits in layout]).astype(np.int32)
                chunk_sym = decoder.decode(_model.Uniform(), sizes) if sizes.size else sizes
                chunk_sym = np.asarray(chunk_sym, dtype=np.int64)
                raw = np.where(lengths > 0, np.left_shift(1, np.maximum(lengths - 1, 0)), 0)
                used = 0
                for c, nbits in enumerate(layout):
                    has = nbits > 0
                    count = int(has.sum())
                    raw[has] += chunk_sym[used : used + count] << (_CHUNK_BITS * c)
                    used += count
            exhausted = bool(decoder.maybe_exhausted())
        except Exception as exc:  # constriction reports bad data through several exception types
            raise CorruptPayloadError(f"range decoder failed: {exc}") from None

        value = coded
        if raw.size:
            value = coded.copy()
            value[escape] = np.where(raw % 2 == 1, -(raw + 1) // 2, max_value[escape] + raw // 2)
        sym_sorted = value + self._offset[idx_sorted]
        if sym_sorted.size and (sym_sorted.min() < _INT32.min or sym_sorted.max() > _INT32.max):
            raise CorruptPayloadError("payload decodes to a symbol outside the int32 range")
        return sym_sorted, exhausted
