"""From h_s's scale output to rows of the y CDF table, in integers only; and the output type of every h_s.

compressai's ``build_indexes`` picks, for a scale s, the row  #(scale_table[:-1] < max(s, scale_bound)).
Every integer h_s gives its scales in fixed point (``scale = scale_fixed / 2**frac_bits``), and for an integer
v,  v / 2**f > t  <=>  v > floor(t * 2**f)  (t * 2**f is exact in float64), so the row is a count of integer
thresholds below the integer scale: no float, the same on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["HyperOutput", "ScaleIndexer"]


@dataclass(frozen=True)
class _ThresholdLookup:
    """#(thresholds < v) for int64 v by table lookup, equal to searchsorted(thresholds, v, 'left') (which
    costs ~30 ns per element, a millisecond per image at 224x224).

    Buckets of width 2**shift, at most one threshold in each (the width is the largest power of two not above
    the smallest gap between thresholds): count = thresholds below the bucket + (v > the bucket's threshold).
    Thresholds are >= 0, so v < 0 counts 0; v above the last threshold counts all."""

    shift: int
    below: np.ndarray  # per bucket: thresholds < bucket start
    inside: np.ndarray  # per bucket: its threshold, or the int64 maximum when it has none
    top: int  # last threshold + 1

    @classmethod
    def build(cls, thresholds: np.ndarray, max_buckets: int = 1 << 17) -> _ThresholdLookup | None:
        t = np.asarray(thresholds, dtype=np.int64)
        if t.size == 0 or t[0] < 0 or (t.size > 1 and np.diff(t).min() < 1):
            return None
        gap = int(np.diff(t).min()) if t.size > 1 else int(t[0]) + 1
        shift = max(gap, 1).bit_length() - 1
        top = int(t[-1]) + 1
        buckets = (top >> shift) + 1
        if buckets > max_buckets:
            return None  # plain searchsorted for tables this fine-grained
        starts = np.arange(buckets, dtype=np.int64) << shift
        below = np.searchsorted(t, starts, side="left").astype(np.int64)
        inside = np.full(buckets, np.iinfo(np.int64).max, dtype=np.int64)
        inside[t >> shift] = t
        return cls(shift, below, inside, top)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        v = np.clip(values, 0, self.top)  # v = top counts every threshold, as any larger v does
        bucket = v >> self.shift
        return self.below[bucket] + (v > self.inside[bucket])


@dataclass(frozen=True)
class HyperOutput:
    """Entropy parameters for y: scale_indexes (B, M, h, w) int32 rows of the y CDF table, and means as
    means_fixed (B, M, h, w) int64 with `frac_bits` fractional bits (mean = means_fixed / 2**frac_bits)."""

    scale_indexes: np.ndarray
    means_fixed: np.ndarray
    frac_bits: int

    @property
    def means(self) -> np.ndarray:
        """Exact float64 means (a power-of-two division of integers below 2**53)."""
        return self.means_fixed.astype(np.float64) / float(1 << self.frac_bits)


class ScaleIndexer:
    """compressai's `build_indexes` on scale = scales_fixed / 2**frac_bits, in integers (module docstring)."""

    def __init__(self, scale_table: np.ndarray, scale_bound: float, frac_bits: int) -> None:
        table = np.asarray(scale_table, dtype=np.float64).ravel()
        if table.size < 1 or not np.all(table > 0) or not np.all(np.diff(table) > 0):
            raise ValueError("scale_table must be positive and strictly increasing")
        self.scale_table = table
        # compressai keeps the bound in a float32 buffer; use that value so indexes match build_indexes
        self.scale_bound = float(np.float32(scale_bound))
        # scale > t  <=>  scale_fixed > floor(t * 2**frac_bits), for integer scale_fixed (t * 2**k is exact)
        self.thresholds = np.floor(table[:-1] * float(1 << frac_bits)).astype(np.int64)
        # lower-bounding the scale at scale_bound makes every entry below the bound count
        self.always = int(np.count_nonzero(table[:-1] < self.scale_bound))
        self.lookup = _ThresholdLookup.build(self.thresholds)

    def __call__(self, scales_fixed: np.ndarray) -> np.ndarray:
        """int32 scale indexes, the shape of `scales_fixed`."""
        values = np.asarray(scales_fixed, dtype=np.int64)
        if self.lookup is None:
            idx = np.searchsorted(self.thresholds, values, side="left")
        else:
            idx = self.lookup(values)
        return np.maximum(idx, self.always).astype(np.int32)
