"""Exact integer convolutions for the fixed-point hyper-synthesis.

Operands are integers stored in float64 arrays, multiplied with BLAS (im2col + one GEMM per call). A float64
product or sum of integers is exact while its magnitude stays below 2**53; the callers prove that bound for
every partial sum from the weight magnitudes and the clamped input range (`max_abs_weight_sum`), so the
result is the exact integer whatever order BLAS adds in: identical for any batch size, thread count, CPU.

Transposed convolution uses the sub-pixel (phase) decomposition: output position o of a stride-s
transposed conv only receives kernel taps t with t ≡ o + padding (mod s), so each of the s*s output phases
is an ordinary stride-1 correlation of the input with a sub-kernel made of those taps, reversed.
This is the "zero-dilated input, flipped kernel" formulation without multiplying the inserted zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "EXACT_LIMIT",
    "ExactConv2d",
    "ExactConvTranspose2d",
    "conv_out_size",
    "conv_transpose_out_size",
    "shift_round",
]

EXACT_LIMIT = 1 << 53  # every integer of smaller magnitude is exact in float64
_IM2COL_BUDGET = 1 << 23  # float64 elements per im2col chunk (64 MiB): bounds memory for big batches


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def conv_transpose_out_size(size: int, kernel: int, stride: int, padding: int, output_padding: int) -> int:
    return (size - 1) * stride - 2 * padding + kernel + output_padding


def shift_round(acc: np.ndarray, shift: int) -> np.ndarray:
    """floor((acc + 2**(shift-1)) / 2**shift) on int64: round half up, the same for every sign and machine."""
    if shift == 0:
        return acc
    return (acc + (1 << (shift - 1))) >> shift


@dataclass(frozen=True)
class _Phase:
    """Taps and output positions of one axis phase of a transposed conv."""

    phase: int
    taps: np.ndarray  # kernel positions, in window order (reversed)
    first_out: int  # first output position of this phase; the others follow every `stride`
    count: int  # number of output positions
    first_in: int  # input index under window element 0 of the first output (may be negative)


def _phase_taps(r: int, kernel: int, stride: int) -> np.ndarray:
    """Kernel taps t = r, r + s, ... that feed phase r, reversed into window (correlation) order."""
    return np.arange(r, kernel, stride)[::-1].copy()


def _phases(out_size: int, taps: list[np.ndarray], stride: int, padding: int) -> list[_Phase]:
    """Output o belongs to phase r = (o + padding) mod s; it reads input q - j through tap r + j*s, where
    q = (o + padding - r) / s, so its window covers inputs q - (J-1) .. q against the reversed taps."""
    phases = []
    for r in range(stride):
        first_out = (r - padding) % stride
        count = max(0, -(-(out_size - first_out) // stride))
        q0 = (first_out + padding - r) // stride
        phases.append(_Phase(r, taps[r], first_out, count, q0 - (len(taps[r]) - 1)))
    return phases


def _gemm_rows(cols: np.ndarray, matrix: np.ndarray, batch: int) -> np.ndarray:
    """(B, rows..., K) window view @ (K, O) in batch chunks that keep the materialised im2col small."""
    if batch == 0:
        return np.zeros((0, matrix.shape[1]))
    per_item = int(np.prod(cols.shape[1:]))
    step = max(1, _IM2COL_BUDGET // max(per_item, 1))
    parts = []
    for start in range(0, batch, step):
        chunk = np.ascontiguousarray(cols[start : start + step]).reshape(-1, matrix.shape[0])
        parts.append(chunk @ matrix)
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


class ExactConv2d:
    """Conv2d(weight (O, C, kh, kw) integers, stride, padding) on integer-valued float64 input, exactly."""

    def __init__(self, weight: np.ndarray, stride: int, padding: int) -> None:
        self.weight = np.asarray(weight, dtype=np.int64)
        self.stride, self.padding = int(stride), int(padding)
        self.out_channels, self.in_channels, self.kh, self.kw = self.weight.shape
        self._matrix = np.ascontiguousarray(self.weight.reshape(self.out_channels, -1).T, dtype=np.float64)

    @property
    def max_abs_weight_sum(self) -> int:
        """Largest sum of |w| one output element accumulates (bounds every partial sum with the input bound)."""
        return int(np.abs(self.weight).sum(axis=(1, 2, 3)).max(initial=0))

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        return (conv_out_size(height, self.kh, self.stride, self.padding),
                conv_out_size(width, self.kw, self.stride, self.padding))

    def __call__(self, x: np.ndarray, out_hw: tuple[int, int] | None = None) -> np.ndarray:
        """x (B, C, H, W) -> int64 (B, O, H', W'); `out_hw` computes only the top-left part of the output."""
        batch, channels = x.shape[:2]
        if channels != self.in_channels:
            raise ValueError(f"conv expects {self.in_channels} input channels, got {channels}")
        out_h, out_w = self.out_size(*x.shape[2:])
        if out_hw is not None:
            out_h, out_w = min(out_h, out_hw[0]), min(out_w, out_hw[1])
        p, s = self.padding, self.stride
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        windows = sliding_window_view(padded, (self.kh, self.kw), axis=(2, 3))[:, :, ::s, ::s][:, :, :out_h, :out_w]
        cols = windows.transpose(0, 2, 3, 1, 4, 5)  # (B, oh, ow, C, kh, kw)
        out = _gemm_rows(cols, self._matrix, batch)
        return out.reshape(batch, out_h, out_w, self.out_channels).transpose(0, 3, 1, 2).astype(np.int64)


class ExactConvTranspose2d:
    """ConvTranspose2d(weight (C, O, kh, kw) integers, stride, padding, output_padding), exactly, by phases."""

    def __init__(self, weight: np.ndarray, stride: int, padding: int, output_padding: int) -> None:
        self.weight = np.asarray(weight, dtype=np.int64)
        self.stride, self.padding, self.output_padding = int(stride), int(padding), int(output_padding)
        self.in_channels, self.out_channels, self.kh, self.kw = self.weight.shape
        self._taps_y = [_phase_taps(r, self.kh, self.stride) for r in range(self.stride)]
        self._taps_x = [_phase_taps(r, self.kw, self.stride) for r in range(self.stride)]
        self._matrices = {}  # (ry, rx) -> (K, O) float64 for the sub-kernel of that phase
        for ry, ty in enumerate(self._taps_y):
            for rx, tx in enumerate(self._taps_x):
                sub = self.weight[:, :, ty][:, :, :, tx]  # (C, O, jy, jx)
                matrix = sub.transpose(1, 0, 2, 3).reshape(self.out_channels, -1).T
                self._matrices[ry, rx] = np.ascontiguousarray(matrix, dtype=np.float64)

    @property
    def max_abs_weight_sum(self) -> int:
        """Largest sum of |w| one output element accumulates: per output channel and phase."""
        best = 0
        for ty in self._taps_y:
            for tx in self._taps_x:
                sub = np.abs(self.weight[:, :, ty][:, :, :, tx])
                best = max(best, int(sub.sum(axis=(0, 2, 3)).max(initial=0)))
        return best

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        k, s, p, op = self.kh, self.stride, self.padding, self.output_padding
        return (conv_transpose_out_size(height, k, s, p, op),
                conv_transpose_out_size(width, self.kw, s, p, op))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x (B, C, H, W) -> int64 (B, O, H', W')."""
        batch, channels, height, width = x.shape
        if channels != self.in_channels:
            raise ValueError(f"transposed conv expects {self.in_channels} input channels, got {channels}")
        out_h, out_w = self.out_size(height, width)
        s = self.stride
        out = np.zeros((batch, self.out_channels, out_h, out_w), dtype=np.int64)
        for py in _phases(out_h, self._taps_y, s, self.padding):
            for px in _phases(out_w, self._taps_x, s, self.padding):
                if py.count == 0 or px.count == 0 or py.taps.size == 0 or px.taps.size == 0:
                    continue  # no output in this phase, or no tap reaches it (output stays 0 + bias)
                jy, jx = py.taps.size, px.taps.size
                lo_y, lo_x = max(0, -py.first_in), max(0, -px.first_in)
                hi_y = max(0, py.first_in + py.count + jy - 1 - height)
                hi_x = max(0, px.first_in + px.count + jx - 1 - width)
                padded = np.pad(x, ((0, 0), (0, 0), (lo_y, hi_y), (lo_x, hi_x)))
                y0, x0 = py.first_in + lo_y, px.first_in + lo_x
                region = padded[:, :, y0 : y0 + py.count + jy - 1, x0 : x0 + px.count + jx - 1]
                cols = sliding_window_view(region, (jy, jx), axis=(2, 3)).transpose(0, 2, 3, 1, 4, 5)
                res = _gemm_rows(cols, self._matrices[py.phase, px.phase], batch)
                res = res.reshape(batch, py.count, px.count, self.out_channels).transpose(0, 3, 1, 2)
                out[:, :, py.first_out :: s, px.first_out :: s] = res
        return out
