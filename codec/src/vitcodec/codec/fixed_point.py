"""Exact integer convolutions for the fixed-point hyper-synthesis.

Integer activations are cut into the planes of an exact GEMM engine (`exact_gemm`: int8 digit planes for
ONNX Runtime's MatMulInteger, or integer-valued float64 for BLAS), laid out by im2col (one GEMM per conv or
deconv phase, planes next to their pixel) and multiplied. The callers prove sum_k |x_k| |w_k| < 2**53 for
every output from the weight magnitudes and the clamped input range (`max_abs_weight_sum`), which is all
either engine needs to return the exact integer whatever order it adds in: identical for any engine, batch
size, thread count, CPU.

Transposed convolution uses the sub-pixel (phase) decomposition: output position o of a stride-s
transposed conv only receives kernel taps t with t ≡ o + padding (mod s), so each of the s*s output phases
is an ordinary stride-1 correlation of the input with a sub-kernel made of those taps, reversed.
This is the "zero-dilated input, flipped kernel" formulation without multiplying the inserted zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .exact_gemm import EXACT_LIMIT, ExactGemm, default_engine

__all__ = [
    "EXACT_LIMIT",
    "ExactConv2d",
    "ExactConvTranspose2d",
    "conv_out_size",
    "conv_transpose_out_size",
    "shift_round",
]



def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def conv_transpose_out_size(size: int, kernel: int, stride: int, padding: int, output_padding: int) -> int:
    return (size - 1) * stride - 2 * padding + kernel + output_padding


def _integers(x: np.ndarray) -> np.ndarray:
    """int64 view of integer activations (float input must hold integers: the old float64 interface)."""
    x = np.asarray(x)
    if x.dtype.kind == "f":
        if not np.array_equal(x, np.rint(x)):
            raise ValueError("exact convolutions take integer activations")
        return x.astype(np.int64)
    return x.astype(np.int64, copy=False)


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


def _padded(planes: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Zero-pad the H and W axes of (B, H, W, S, C) planes (np.pad's generic path costs more at small sizes)."""
    if not (top or bottom or left or right):
        return planes
    b, h, w = planes.shape[:3]
    out = np.zeros((b, h + top + bottom, w + left + right, *planes.shape[3:]), dtype=planes.dtype)
    out[:, top : top + h, left : left + w] = planes
    return out


def _im2col(planes: np.ndarray, kh: int, kw: int, stride: int) -> np.ndarray:
    """(B, H, W, S, C) planes -> window view (B, oh, ow, S, kh, kw, C): rows (pixel, plane), then K in
    (kh, kw, C) order with C innermost, so the engine's copy moves whole channel runs."""
    # numpy 1.26's stub types `axis` as one int; the function takes a tuple (its docs, and it runs so)
    windows = sliding_window_view(planes, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]  # pyright: ignore[reportArgumentType, reportCallIssue]
    return windows.transpose(0, 1, 2, 3, 5, 6, 4)


class ExactConv2d:
    """Conv2d(weight (O, C, kh, kw) integers, stride, padding) on integer input, exactly (see `exact_gemm`)."""

    def __init__(self, weight: np.ndarray, stride: int, padding: int, engine: ExactGemm | None = None) -> None:
        self.weight = np.asarray(weight, dtype=np.int64)
        self.stride, self.padding = int(stride), int(padding)
        self.out_channels, self.in_channels, self.kh, self.kw = self.weight.shape
        self.engine = engine or default_engine()
        # K in (kh, kw, C) order, as `_im2col` lays the windows out
        self._prepared = self.engine.prepare(self.weight.transpose(2, 3, 1, 0).reshape(-1, self.out_channels))

    @property
    def max_abs_weight_sum(self) -> int:
        """Largest sum of |w| one output element accumulates (bounds every partial sum with the input bound)."""
        return int(np.abs(self.weight).sum(axis=(1, 2, 3)).max(initial=0))

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        return (conv_out_size(height, self.kh, self.stride, self.padding),
                conv_out_size(width, self.kw, self.stride, self.padding))

    def __call__(self, x: np.ndarray, out_hw: tuple[int, int] | None = None) -> np.ndarray:
        """x (B, C, H, W) integers -> int64 (B, O, H', W'); `out_hw` computes only the top-left part."""
        x = _integers(x)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"conv expects {self.in_channels} input channels, got {x.shape[1]}")
        return self.nhwc(x.transpose(0, 2, 3, 1), out_hw).transpose(0, 3, 1, 2)

    def nhwc(self, x: np.ndarray, out_hw: tuple[int, int] | None = None) -> np.ndarray:
        """The same on channels-last int64 (B, H, W, C) -> (B, H', W', O): the layout h_s runs in."""
        batch = x.shape[0]
        out_h, out_w = self.out_size(*x.shape[1:3])
        if out_hw is not None:
            out_h, out_w = min(out_h, out_hw[0]), min(out_w, out_hw[1])
        bound = int(np.abs(x).max(initial=0))
        planes, coefficients = self.engine.split(x)  # (B, H, W, S, C)
        p, s = self.padding, self.stride
        # rows the crop drops are never read: pad and window only what the kept outputs need
        need_h, need_w = (out_h - 1) * s + self.kh, (out_w - 1) * s + self.kw
        padded = _padded(planes, p, p, p, p)[:, :need_h, :need_w]
        out = self.engine.product(_im2col(padded, self.kh, self.kw, s), self._prepared, coefficients, bound)
        return out.reshape(batch, out_h, out_w, self.out_channels)


class ExactConvTranspose2d:
    """ConvTranspose2d(weight (C, O, kh, kw) integers, stride, padding, output_padding), exactly, by phases."""

    def __init__(
        self, weight: np.ndarray, stride: int, padding: int, output_padding: int, engine: ExactGemm | None = None
    ) -> None:
        self.weight = np.asarray(weight, dtype=np.int64)
        self.stride, self.padding, self.output_padding = int(stride), int(padding), int(output_padding)
        self.in_channels, self.out_channels, self.kh, self.kw = self.weight.shape
        self.engine = engine or default_engine()
        self._taps_y = [_phase_taps(r, self.kh, self.stride) for r in range(self.stride)]
        self._taps_x = [_phase_taps(r, self.kw, self.stride) for r in range(self.stride)]
        self._prepared = {}  # (ry, rx) -> the engine's form of the (K, O) sub-kernel of that phase
        for ry, ty in enumerate(self._taps_y):
            for rx, tx in enumerate(self._taps_x):
                if ty.size and tx.size:
                    sub = self.weight[:, :, ty][:, :, :, tx]  # (C, O, jy, jx) -> K in (jy, jx, C) order
                    matrix = sub.transpose(2, 3, 0, 1).reshape(-1, self.out_channels)
                    self._prepared[ry, rx] = self.engine.prepare(matrix)

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

    def __call__(self, x: np.ndarray, out_hw: tuple[int, int] | None = None) -> np.ndarray:
        """x (B, C, H, W) integers -> int64 (B, O, H', W'); `out_hw` computes (and returns) only the top-left
        part."""
        x = _integers(x)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"transposed conv expects {self.in_channels} input channels, got {x.shape[1]}")
        return self.nhwc(x.transpose(0, 2, 3, 1), out_hw).transpose(0, 3, 1, 2)

    def nhwc(self, x: np.ndarray, out_hw: tuple[int, int] | None = None) -> np.ndarray:
        """The same on channels-last int64 (B, H, W, C) -> (B, H', W', O): the layout h_s runs in."""
        batch, height, width = x.shape[:3]
        full_h, full_w = self.out_size(height, width)
        out_h, out_w = (full_h, full_w) if out_hw is None else (min(full_h, out_hw[0]), min(full_w, out_hw[1]))
        bound = int(np.abs(x).max(initial=0))
        planes, coefficients = self.engine.split(x)  # (B, H, W, S, C)
        s = self.stride
        out = np.zeros((batch, out_h, out_w, self.out_channels), dtype=np.int64)
        for py in _phases(out_h, self._taps_y, s, self.padding):
            for px in _phases(out_w, self._taps_x, s, self.padding):
                if py.count == 0 or px.count == 0 or py.taps.size == 0 or px.taps.size == 0:
                    continue  # no output in this phase, or no tap reaches it (output stays 0 + bias)
                jy, jx = py.taps.size, px.taps.size
                lo_y, lo_x = max(0, -py.first_in), max(0, -px.first_in)
                hi_y = max(0, py.first_in + py.count + jy - 1 - height)
                hi_x = max(0, px.first_in + px.count + jx - 1 - width)
                padded = _padded(planes, lo_y, hi_y, lo_x, hi_x)
                y0, x0 = py.first_in + lo_y, px.first_in + lo_x
                region = padded[:, y0 : y0 + py.count + jy - 1, x0 : x0 + px.count + jx - 1]
                res = self.engine.product(_im2col(region, jy, jx, 1), self._prepared[py.phase, px.phase],
                                          coefficients, bound)
                out[:, py.first_out :: s, px.first_out :: s] = res.reshape(batch, py.count, px.count, self.out_channels)
        return out
