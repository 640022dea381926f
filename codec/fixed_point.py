"""Exact integer convolutions for the fixed-point hyper-synthesis.

Operands are integers stored in float64 arrays, multiplied with BLAS (im2col + one GEMM per call). A float64
product or sum of integers is exact while its magnitude stays below 2**53; the callers prove that bound for
every partial sum from the weight magnitudes and the clamped activation range (`max_abs_weight_sum`), so the
result is the exact integer whatever order BLAS adds in: identical for any batch size, thread count, CPU.

Transposed convolution uses the sub-pixel (phase) decomposition: output position o of a stride-s
transposed conv only receives kernel taps t with t = (o + padding) mod s (mod s), so each of the s*s output
phases is an ordinary stride-1 correlation of the input with a sub-kernel made of those taps, reversed.
This is the "zero-dilated input, flipped kernel" formulation without multiplying the inserted zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "EXACT_LIMIT",
    "conv2d",
    "conv_transpose2d",
    "conv_out_size",
    "conv_transpose_out_size",
    "max_abs_weight_sum",
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

    taps: np.ndarray  # kernel positions, in window order (reversed)
    first_out: int  # first output position of this phase; the others follow every `stride`
    count: int  # number of output positions
    first_in: int  # input index under window element 0 of the first output (may be negative)


def _phases(size: int, kernel: int, stride: int, padding: int, output_padding: int) -> list[_Phase]:
    out_size = conv_transpose_out_size(size, kernel, stride, padding, output_padding)
    phases = []
    for r in range(stride):
        taps = np.arange(r, kernel, stride)
        first_out = (r - padding) % stride
        count = max(0, -(-(out_size - first_out) // stride))
        q0 = (first_out + padding - r) // stride  # input index paired with tap r for the first output
        phases.append(_Phase(taps[::-1].copy(), first_out, count, q0 - (len(taps) - 1)))
    return phases


def max_abs_weight_sum(weight: np.ndarray, kind: str, stride: int = 1, padding: int = 0) -> int:
    """Largest sum of |w| that one output element can accumulate (per output channel, per phase)."""
    w = np.abs(np.asarray(weight, dtype=np.int64))
    if kind == "conv":  # (out, in, kh, kw)
        return int(w.sum(axis=(1, 2, 3)).max(initial=0))
    kh, kw = w.shape[2:]
    best = 0
    for ry in _phases(1, kh, stride, padding, 0):
        for rx in _phases(1, kw, stride, padding, 0):
            sub = w[:, :, ry.taps][:, :, :, rx.taps]  # (in, out, jy, jx)
            best = max(best, int(sub.sum(axis=(0, 2, 3)).max(initial=0)))
    return best


def _gemm_rows(cols: np.ndarray, matrix: np.ndarray, batch: int) -> np.ndarray:
    """(B, rows..., K) window view @ (K, O) in batch chunks that keep the materialised im2col small."""
    per_item = int(np.prod(cols.shape[1:]))
    step = max(1, _IM2COL_BUDGET // max(per_item, 1))
    parts = []
    for start in range(0, batch, step):
        chunk = np.ascontiguousarray(cols[start : start + step]).reshape(-1, matrix.shape[0])
        parts.append(chunk @ matrix)
    return np.concatenate(parts, axis=0)


def conv2d(
    x: np.ndarray, weight: np.ndarray, stride: int, padding: int, out_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """Exact conv of integer-valued float64 x (B, C, H, W) with integer weight (O, C, kh, kw) -> int64.

    `out_hw` computes only the top-left part of the output (the rest would be cropped away).
    """
    batch, channels, height, width = x.shape
    out_ch, in_ch, kh, kw = weight.shape
    if in_ch != channels:
        raise ValueError(f"conv expects {in_ch} input channels, got {channels}")
    out_h, out_w = conv_out_size(height, kh, stride, padding), conv_out_size(width, kw, stride, padding)
    if out_hw is not None:
        out_h, out_w = min(out_h, out_hw[0]), min(out_w, out_hw[1])
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride][:, :, :out_h, :out_w]
    cols = windows.transpose(0, 2, 3, 1, 4, 5)  # (B, oh, ow, C, kh, kw)
    matrix = weight.reshape(out_ch, -1).T.astype(np.float64)
    out = _gemm_rows(cols, matrix, batch)
    return out.reshape(batch, out_h, out_w, out_ch).transpose(0, 3, 1, 2).astype(np.int64)


def conv_transpose2d(x: np.ndarray, weight: np.ndarray, stride: int, padding: int, output_padding: int) -> np.ndarray:
    """Exact transposed conv of integer-valued float64 x (B, C, H, W) with weight (C, O, kh, kw) -> int64."""
    batch, channels, height, width = x.shape
    in_ch, out_ch, kh, kw = weight.shape
    if in_ch != channels:
        raise ValueError(f"transposed conv expects {in_ch} input channels, got {channels}")
    out_h = conv_transpose_out_size(height, kh, stride, padding, output_padding)
    out_w = conv_transpose_out_size(width, kw, stride, padding, output_padding)
    out = np.zeros((batch, out_ch, out_h, out_w), dtype=np.int64)
    for py in _phases(height, kh, stride, padding, output_padding):
        for px in _phases(width, kw, stride, padding, output_padding):
            if py.count == 0 or px.count == 0 or py.taps.size == 0 or px.taps.size == 0:
                continue
            jy, jx = py.taps.size, px.taps.size
            lo_y, lo_x = max(0, -py.first_in), max(0, -px.first_in)
            hi_y = max(0, py.first_in + py.count + jy - 1 - height)
            hi_x = max(0, px.first_in + px.count + jx - 1 - width)
            padded = np.pad(x, ((0, 0), (0, 0), (lo_y, hi_y), (lo_x, hi_x)))
            y0, x0 = py.first_in + lo_y, px.first_in + lo_x
            region = padded[:, :, y0 : y0 + py.count + jy - 1, x0 : x0 + px.count + jx - 1]
            windows = sliding_window_view(region, (jy, jx), axis=(2, 3))  # (B, C, cy, cx, jy, jx)
            cols = windows.transpose(0, 2, 3, 1, 4, 5)
            sub = weight[:, :, py.taps][:, :, :, px.taps]  # (C, O, jy, jx)
            matrix = sub.transpose(1, 0, 2, 3).reshape(out_ch, -1).T.astype(np.float64)
            res = _gemm_rows(cols, matrix, batch).reshape(batch, py.count, px.count, out_ch)
            out[:, :, py.first_out :: stride, px.first_out :: stride] = res.transpose(0, 3, 1, 2).astype(np.int64)
    return out
