"""The 8-bit integer h_s (h_s format 2): its exact arithmetic *is* int8 inference.

Integer-only inference as in Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference" (CVPR 2018): every layer is ONE u8 x s8 GEMM with int32 accumulation and an
integer requantisation. Edge and cloud run it alike, and the integers it produces are defined below, not by any
engine, so both derive the same CDF rows on every runtime::

    z symbols ──► input map ──► u8 ──► [conv | deconv as one GEMM] ──► requantise ─► u8 ─► ... ──► last layer
    last layer ──► requantise to fixed point (frac_bits) ──► scales ─► scale indexes (integer comparisons)
                                                          └─► means = means_fixed / 2**frac_bits (exact float64)

Definitions (all integer; ``rs(v, s) = floor((v + 2**(s-1)) / 2**s)``, round half up, arithmetic shift):

- Input map, per z channel c: ``q = clamp(rs(clamp(symbol, ±2**20) * A[c] + B[c], S), 0, act_max)`` (u8). The
  exporter sets A = 2**S / s_c and B = (median_c / s_c + zp_c) * 2**S, rounded, so q = zp_c + round(ẑ / s_c).
- A layer's input has one zero point per channel (``zp``: the input map's for the first layer, the previous
  layer's output zero point after it); padding is filled with ``zp``, so it means a real 0.
- conv: im2col windows (kh, kw, C) of the padded u8 input, times int8 weights (K, O).
  deconv (stride s): output position o gets kernel taps t = r + j*s, r = (o + padding) mod s, from input
  (o + padding - r) / s - j; so one window of J = ceil(k / s) inputs per axis feeds all s*s output phases,
  and the layer is one GEMM with (J*J*C) rows of K and s*s*O columns (taps a phase lacks are zero), whose
  output is interleaved back (pixel shuffle) and cropped by the padding.
- Per output column: ``v = sum_k x_k w_k - sum_k zp_k w_k + bias`` (the zero-point sum is folded into the bias
  once), then ``rs(v * M0[o], shift[o])``: for hidden layers ``+ out_zero_point``, clamped to
  ``[out_zero_point if relu else 0, act_max]`` (u8); for the last layer kept as int64 fixed point with
  ``frac_bits`` fractional bits, channels [0, M) scales, [M, 2M) means.

Exactness: the GEMM is the only place a runtime computes; it gets u8 entries <= act_max and int8 weights with
|w| <= weight_max, and at build time we check, for every layer, ``K * act_max * weight_max < 2**31`` (no int32
accumulator can overflow, in any order) and ``2 * act_max * weight_max < 2**15`` (no saturation in kernels that
add product pairs in int16); see `int8_gemm`. The rest (zero points, bias, requantisation, clamps) runs in int64
numpy, checked at build time not to overflow: ``(act_max * sum|w| + |bias|) * M0 + 2**(shift-1) < 2**63``.
So results do not depend on the GEMM engine, batch size, thread count or CPU. Weights, biases and
multipliers come from the float h_s by post-training quantisation (`int8_quantise`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .int8_gemm import INT16_PAIR_LIMIT, INT32_LIMIT, Int8Gemm, default_int8_engine
from .scale_index import HyperOutput, ScaleIndexer
from .tables import hash_arrays

__all__ = ["FORMAT", "InputMap", "Int8HyperSynthesis", "Int8Layer"]

FORMAT = 2  # hs_format of `to_arrays`; format 1 is `IntegerHyperSynthesis`
_KINDS = ("conv", "deconv")
SYMBOL_CLAMP = 1 << 20  # z symbols beyond this (never seen from a real encoder) are clamped before the map
_INT64_LIMIT = 1 << 63


@dataclass(frozen=True)
class InputMap:
    """z symbols -> u8 per channel: q = clamp(rs(symbol * multiplier + offset, shift), 0, act_max);
    zero_point (C,) is the u8 value of a real 0 (the first layer's padding)."""

    multiplier: np.ndarray  # (C,) int64
    offset: np.ndarray  # (C,) int64
    shift: int
    zero_point: np.ndarray  # (C,) int64


@dataclass(frozen=True)
class Int8Layer:
    """One conv or deconv layer: int8 weight in PyTorch layout (conv: O,C,kh,kw; deconv: C,O,kh,kw), int64
    bias in accumulator units, requantisation multiplier (O,) in [0, 2**31) and shift (O,) in 1..62."""

    kind: str
    weight: np.ndarray
    bias: np.ndarray
    multiplier: np.ndarray
    shift: np.ndarray
    stride: int = 1
    padding: int = 0
    output_padding: int = 0
    relu: bool = False
    out_zero_point: int = 0

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1] if self.kind == "conv" else self.weight.shape[0])

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0] if self.kind == "conv" else self.weight.shape[1])


def _rounding(shift: np.ndarray) -> np.ndarray:
    return np.left_shift(np.int64(1), shift - 1)


class _Op:
    """A layer as one GEMM: the weight matrix (K, columns), per-column epilogue constants, geometry."""

    def __init__(self, layer: Int8Layer, in_zero_point: np.ndarray, engine: Int8Gemm, last: bool,
                 act_max: int) -> None:
        self.layer, self.last, self.engine, self.act_max = layer, last, engine, act_max
        w = layer.weight.astype(np.int64)
        s = layer.stride
        if layer.kind == "conv":
            o, c, self.kh, self.kw = w.shape
            matrix = w.transpose(2, 3, 1, 0).reshape(-1, o)  # K in (kh, kw, C) order, as the windows
            self.phases = 1
        else:
            c, o, kh, kw = w.shape
            self.kh, self.kw = -(-kh // s), -(-kw // s)  # J per axis: the window of one output phase
            taps = np.zeros((self.kh, self.kw, c, s, s, o), np.int64)
            for ey in range(self.kh):
                for ry in range(s):
                    ty = ry + (self.kh - 1 - ey) * s
                    if ty >= kh:
                        continue
                    for ex in range(self.kw):
                        for rx in range(s):
                            tx = rx + (self.kw - 1 - ex) * s
                            if tx < kw:
                                taps[ey, ex, :, ry, rx, :] = w[:, :, ty, tx]
            matrix = taps.reshape(self.kh * self.kw * c, s * s * o)
            self.phases = s * s
        self.in_channels, self.out_channels = c, o
        self.k = matrix.shape[0]
        self.zero_point = np.asarray(in_zero_point, np.int64)
        self.pad_value = self.zero_point.astype(np.uint8)
        zp_k = np.tile(self.zero_point, self.kh * self.kw)  # the zero point of every K entry
        self.bias = np.tile(layer.bias, self.phases) - zp_k @ matrix
        self.multiplier = np.tile(layer.multiplier, self.phases)
        self.shift = np.tile(layer.shift, self.phases)
        self.round = _rounding(self.shift)
        self.abs_sum = np.abs(matrix).sum(axis=0)  # per column: bounds |v| with the activation range
        self.prepared = engine.prepare(matrix.astype(np.int8))

    # geometry ------------------------------------------------------------------------------------------

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        layer, s = self.layer, self.layer.stride
        if layer.kind == "conv":
            return (h + 2 * layer.padding - self.kh) // s + 1, (w + 2 * layer.padding - self.kw) // s + 1
        kh, kw = layer.weight.shape[2:]
        return ((h - 1) * s - 2 * layer.padding + kh + layer.output_padding,
                (w - 1) * s - 2 * layer.padding + kw + layer.output_padding)

    def in_needed(self, n_out: int, n_in: int, axis: int) -> int:
        """Input rows (axis 0) or columns (1) that the first n_out outputs read."""
        layer, s = self.layer, self.layer.stride
        k = self.kh if axis == 0 else self.kw
        if layer.kind == "conv":
            return min(n_in, (n_out - 1) * s + k - layer.padding)
        return min(n_in, (layer.padding + n_out - 1) // s + 1)

    # running -------------------------------------------------------------------------------------------

    def _window_input(self, x: np.ndarray, first: tuple[int, int], count: tuple[int, int]) -> np.ndarray:
        """x (B, H, W, C) u8 -> rows first..first+count-1 (and columns) with zero-point padding outside x."""
        b, h, w, c = x.shape
        out = np.empty((b, count[0], count[1], c), np.uint8)
        out[...] = self.pad_value
        y0, y1 = max(first[0], 0), min(first[0] + count[0], h)
        x0, x1 = max(first[1], 0), min(first[1] + count[1], w)
        if y1 > y0 and x1 > x0:
            out[:, y0 - first[0] : y1 - first[0], x0 - first[1] : x1 - first[1]] = x[:, y0:y1, x0:x1]
        return out

    def _gemm(self, x: np.ndarray, stride: int, rows: tuple[int, int]) -> np.ndarray:
        # numpy 1.26's stub types `axis` as one int; the function takes a tuple (its docs, and it runs so)
        windows = sliding_window_view(x, (self.kh, self.kw), axis=(1, 2))[:, ::stride, ::stride]  # pyright: ignore[reportArgumentType, reportCallIssue]
        windows = windows[:, : rows[0], : rows[1]]  # (B, oh, ow, C, kh, kw) -> K in (kh, kw, C) order
        cols = np.ascontiguousarray(windows.transpose(0, 1, 2, 4, 5, 3)).reshape(-1, self.k)
        return self._epilogue(self.engine.product(cols, self.prepared))

    def _epilogue(self, acc: np.ndarray) -> np.ndarray:
        v = acc.astype(np.int64)
        v += self.bias
        v *= self.multiplier
        v += self.round
        np.right_shift(v, self.shift, out=v)
        if self.last:
            return v
        layer = self.layer
        v += layer.out_zero_point
        np.clip(v, layer.out_zero_point if layer.relu else 0, self.act_max, out=v)
        return v.astype(np.uint8)

    def __call__(self, x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
        """x (B, H, W, C) u8 -> (B, out_h, out_w, O): u8, or int64 fixed point for the last layer."""
        batch = x.shape[0]
        layer, s = self.layer, self.layer.stride
        oh, ow = out_hw
        if layer.kind == "conv":
            span = ((oh - 1) * s + self.kh, (ow - 1) * s + self.kw)
            padded = self._window_input(x, (-layer.padding, -layer.padding), span)
            return self._gemm(padded, s, (oh, ow)).reshape(batch, oh, ow, self.out_channels)
        lo = layer.padding // s
        qh, qw = (layer.padding + oh - 1) // s - lo + 1, (layer.padding + ow - 1) // s - lo + 1
        padded = self._window_input(x, (lo - self.kh + 1, lo - self.kw + 1), (qh + self.kh - 1, qw + self.kw - 1))
        res = self._gemm(padded, 1, (qh, qw)).reshape(batch, qh, qw, s, s, self.out_channels)
        res = res.transpose(0, 1, 3, 2, 4, 5).reshape(batch, qh * s, qw * s, self.out_channels)
        start = layer.padding - lo * s
        return res[:, start : start + oh, start : start + ow]


class Int8HyperSynthesis:
    """h_s format 2: integer-only int8 inference with exact integer outputs (see the module docstring).

    Built by `int8_quantise.quantise` from the trained float layers, or by `from_arrays` from a package.
    """

    format = FORMAT

    def __init__(
        self,
        layers: list[Int8Layer],
        input_map: InputMap,
        *,
        act_max: int,
        weight_max: int,
        frac_bits: int,
        scale_table: np.ndarray,
        scale_bound: float = 0.11,
        engine: Int8Gemm | None = None,
    ) -> None:
        if not (1 <= act_max <= 255 and 1 <= weight_max <= 127):
            raise ValueError("act_max must lie in 1..255 (u8) and weight_max in 1..127 (s8)")
        if 2 * act_max * weight_max > INT16_PAIR_LIMIT:
            raise ValueError(f"2 * act_max * weight_max = {2 * act_max * weight_max} exceeds 2**15 - 1: int16 "
                             "pair sums of some int8 kernels would saturate")
        if not 0 <= frac_bits <= 30:
            raise ValueError("frac_bits must lie in 0..30")
        self.act_max, self.weight_max, self.frac_bits = int(act_max), int(weight_max), int(frac_bits)
        if not layers:
            raise ValueError("h_s needs at least one layer")
        self.layers = [self._checked(layer, last=i == len(layers) - 1) for i, layer in enumerate(layers)]
        for prev, nxt in zip(self.layers, self.layers[1:]):
            if prev.out_channels != nxt.in_channels:
                raise ValueError(f"layer gives {prev.out_channels} channels, next layer takes {nxt.in_channels}")
        if self.layers[-1].out_channels % 2:
            raise ValueError("last layer must give 2*M channels (scales then means)")
        self.in_channels = self.layers[0].in_channels
        self.M = self.layers[-1].out_channels // 2
        self.upsampling = math.prod(layer.stride for layer in self.layers if layer.kind == "deconv")
        self.input_map = self._checked_input(input_map)
        self.engine = engine or default_int8_engine()
        self._ops: list[_Op] = []
        zero_point = self.input_map.zero_point
        for i, layer in enumerate(self.layers):
            op = _Op(layer, zero_point, self.engine, i == len(self.layers) - 1, self.act_max)
            self._check_exactness(i, op)
            self._ops.append(op)
            zero_point = np.full(layer.out_channels, layer.out_zero_point, np.int64)
        self._indexer = ScaleIndexer(scale_table, scale_bound, self.frac_bits)
        self.scale_table, self.scale_bound = self._indexer.scale_table, self._indexer.scale_bound

    # --- construction ---------------------------------------------------------------------------------

    def _checked(self, layer: Int8Layer, last: bool) -> Int8Layer:
        if layer.kind not in _KINDS:
            raise ValueError(f"unknown layer kind {layer.kind!r} (expected one of {_KINDS})")
        weight = np.asarray(layer.weight)
        if weight.ndim != 4 or weight.dtype.kind not in "iu":
            raise ValueError(f"{layer.kind} layer needs a 4-D integer weight")
        if np.abs(weight.astype(np.int64)).max(initial=0) > self.weight_max:
            raise ValueError(f"weights beyond ±weight_max = {self.weight_max}")
        out_ch = weight.shape[0] if layer.kind == "conv" else weight.shape[1]
        arrays = {}
        for name in ("bias", "multiplier", "shift"):
            value = np.array(getattr(layer, name), dtype=np.int64).ravel()
            if value.shape != (out_ch,):
                raise ValueError(f"{name} needs shape ({out_ch},), got {value.shape}")
            value.setflags(write=False)
            arrays[name] = value
        if np.abs(arrays["bias"]).max(initial=0) >= INT32_LIMIT:
            raise ValueError("biases must fit int32")
        if arrays["multiplier"].min(initial=0) < 0 or arrays["multiplier"].max(initial=0) >= INT32_LIMIT:
            raise ValueError("multipliers must lie in 0..2**31 - 1")
        if arrays["shift"].min(initial=1) < 1 or arrays["shift"].max(initial=1) > 62:
            raise ValueError("shifts must lie in 1..62")
        if layer.stride < 1 or layer.padding < 0 or layer.output_padding < 0:
            raise ValueError("stride must be >= 1, padding and output_padding >= 0")
        if layer.kind == "conv" and layer.output_padding:
            raise ValueError("conv layers have no output_padding")
        if layer.kind == "deconv" and (layer.padding >= weight.shape[2] or weight.shape[2] != weight.shape[3]):
            raise ValueError("deconv layers need a square kernel larger than their padding")
        if not 0 <= layer.out_zero_point <= self.act_max:
            raise ValueError(f"out_zero_point must lie in 0..{self.act_max}")
        if last and (layer.relu or layer.out_zero_point):
            raise ValueError("the last layer gives fixed-point scales and means: no ReLU, no zero point")
        frozen = np.array(weight, dtype=np.int8)
        frozen.setflags(write=False)
        return Int8Layer(layer.kind, frozen, arrays["bias"], arrays["multiplier"], arrays["shift"],
                         int(layer.stride), int(layer.padding), int(layer.output_padding), bool(layer.relu),
                         int(layer.out_zero_point))

    def _checked_input(self, input_map: InputMap) -> InputMap:
        arrays = {}
        for name in ("multiplier", "offset", "zero_point"):
            value = np.array(getattr(input_map, name), dtype=np.int64).ravel()
            if value.shape != (self.in_channels,):
                raise ValueError(f"input {name} needs shape ({self.in_channels},), got {value.shape}")
            value.setflags(write=False)
            arrays[name] = value
        shift = int(input_map.shift)
        if not 1 <= shift <= 62:
            raise ValueError("input shift must lie in 1..62")
        if arrays["zero_point"].min(initial=0) < 0 or arrays["zero_point"].max(initial=0) > self.act_max:
            raise ValueError(f"input zero points must lie in 0..{self.act_max}")
        worst = (SYMBOL_CLAMP * np.abs(arrays["multiplier"]) + np.abs(arrays["offset"])).max(initial=0)
        if int(worst) + (1 << (shift - 1)) >= _INT64_LIMIT:
            raise ValueError("input map overflows int64 for symbols up to 2**20")
        return InputMap(arrays["multiplier"], arrays["offset"], shift, arrays["zero_point"])

    def _check_exactness(self, i: int, op: _Op) -> None:
        """The bounds of the module docstring, for layer i: int32 GEMM sums, int64 requantisation."""
        if op.k * self.act_max * self.weight_max >= INT32_LIMIT:
            raise ValueError(f"layer {i}: K * act_max * weight_max = {op.k * self.act_max * self.weight_max} "
                             "reaches 2**31: the int32 accumulator could overflow")
        layer = op.layer
        worst_v = self.act_max * op.abs_sum + np.abs(np.tile(layer.bias, op.phases))
        worst = max((int(v) * int(m) + int(r) for v, m, r in zip(worst_v, op.multiplier, op.round)), default=0)
        if worst >= _INT64_LIMIT:
            raise ValueError(f"layer {i}: the requantisation (v * multiplier) could overflow int64")

    def with_engine(self, engine: Int8Gemm) -> Int8HyperSynthesis:
        """The same h_s on another exact int8 GEMM engine (same results; e.g. the numpy reference)."""
        return Int8HyperSynthesis(self.layers, self.input_map, act_max=self.act_max, weight_max=self.weight_max,
                                  frac_bits=self.frac_bits, scale_table=self.scale_table,
                                  scale_bound=self.scale_bound, engine=engine)

    # --- running --------------------------------------------------------------------------------------

    def fixed_input(self, z_symbols: np.ndarray, medians: np.ndarray | None = None) -> np.ndarray:
        """The u8 input (B, N, h, w) of z symbols by the input map. The medians are part of the map (set at
        export from the same tables); the argument is accepted so both h_s formats share one interface."""
        symbols = np.asarray(z_symbols)
        if symbols.dtype.kind not in "iu" or symbols.ndim != 4 or symbols.shape[1] != self.in_channels:
            raise ValueError(f"z symbols must be integers (B, {self.in_channels}, h, w), got {symbols.dtype} "
                             f"{symbols.shape}")
        m = self.input_map
        v = np.clip(symbols.astype(np.int64), -SYMBOL_CLAMP, SYMBOL_CLAMP)
        v *= m.multiplier.reshape(1, -1, 1, 1)
        v += m.offset.reshape(1, -1, 1, 1) + (1 << (m.shift - 1))
        np.right_shift(v, m.shift, out=v)
        return np.clip(v, 0, self.act_max).astype(np.uint8)

    def output_size(self, z_hw: tuple[int, int]) -> tuple[int, int]:
        """Spatial size of h_s's output for a z of size z_hw (before any crop)."""
        height, width = z_hw
        for op in self._ops:
            height, width = op.out_size(height, width)
        return height, width

    def _sizes(self, z_hw: tuple[int, int], out_hw: tuple[int, int] | None) -> list[tuple[int, int]]:
        """Per layer, the top-left part of its output that later layers (and the final crop) read."""
        full = [tuple(z_hw)]
        for op in self._ops:
            full.append(op.out_size(*full[-1]))
        need = list(out_hw) if out_hw is not None else list(full[-1])
        sizes = []
        for i in range(len(self._ops) - 1, -1, -1):
            need = [min(n, f) for n, f in zip(need, full[i + 1])]
            sizes.append((need[0], need[1]))
            need = [self._ops[i].in_needed(need[a], full[i][a], a) for a in (0, 1)]
        return sizes[::-1]

    def _run(self, q_input: np.ndarray, out_hw: tuple[int, int] | None) -> np.ndarray:
        x = np.asarray(q_input)
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.dtype != np.uint8:
            raise ValueError(f"h_s input must be uint8 (B, {self.in_channels}, h, w) from fixed_input, got "
                             f"{x.dtype} {x.shape}")
        if x.size and x.max() > self.act_max:
            raise ValueError(f"h_s input values must lie in 0..{self.act_max}")
        z_hw = (x.shape[2], x.shape[3])
        full_hw = self.output_size(z_hw)
        if out_hw is not None and (out_hw[0] > full_hw[0] or out_hw[1] > full_hw[1] or min(out_hw) < 1):
            raise ValueError(f"crop {out_hw} does not fit h_s output {full_hw}")
        act = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        for op, size in zip(self._ops, self._sizes(z_hw, out_hw)):
            act = op(act, size)
        return np.ascontiguousarray(act.transpose(0, 3, 1, 2))

    def scale_indexes(self, scales_fixed: np.ndarray) -> np.ndarray:
        """compressai's `build_indexes` on scale = scales_fixed / 2**frac_bits, in integers only."""
        return self._indexer(scales_fixed)

    def forward(self, q_input: np.ndarray, out_hw: tuple[int, int] | None = None) -> HyperOutput:
        """Scale indexes and fixed-point means for a batch of u8 inputs (B, N, hz, wz), cropped top-left."""
        out = self._run(q_input, out_hw)
        return HyperOutput(self.scale_indexes(out[:, : self.M]), np.ascontiguousarray(out[:, self.M :]),
                           self.frac_bits)

    def forward_float(self, q_input: np.ndarray,
                      out_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Dequantised (scales, means) as float64 (to price the rate against the float h_s)."""
        out = self._run(q_input, out_hw).astype(np.float64) / float(1 << self.frac_bits)
        return out[:, : self.M], out[:, self.M :]

    # --- persistence ----------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (keys prefixed hs_) that `from_arrays` reads back; safe to merge into a tables .npz."""
        m = self.input_map
        arrays: dict[str, np.ndarray] = {
            "hs_format": np.array([FORMAT], np.int64),
            "hs_config": np.array([self.act_max, self.weight_max, self.frac_bits, m.shift], np.int64),
            "hs_input_multiplier": m.multiplier.astype(np.int64),
            "hs_input_offset": m.offset.astype(np.int64),
            "hs_input_zero_point": m.zero_point.astype(np.uint8),
            "hs_layers": np.array([[_KINDS.index(layer.kind), layer.stride, layer.padding, layer.output_padding,
                                    int(layer.relu), layer.out_zero_point] for layer in self.layers],
                                  np.int64).reshape(-1, 6),
            "hs_scale_table": self.scale_table,
            "hs_scale_bound": np.array([self.scale_bound], np.float64),
        }
        for i, layer in enumerate(self.layers):
            arrays[f"hs_weight_{i}"] = layer.weight.astype(np.int8)
            arrays[f"hs_bias_{i}"] = layer.bias.astype(np.int32)
            arrays[f"hs_multiplier_{i}"] = layer.multiplier.astype(np.int32)
            arrays[f"hs_shift_{i}"] = layer.shift.astype(np.int8)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], engine: Int8Gemm | None = None) -> Int8HyperSynthesis:
        fmt = int(np.asarray(arrays.get("hs_format", [0])).ravel()[0])
        if fmt != FORMAT:
            raise ValueError(f"h_s format {fmt} is not the 8-bit format {FORMAT}")
        act_max, weight_max, frac_bits, shift = (int(v) for v in np.asarray(arrays["hs_config"]).ravel())
        layers = []
        for i, row in enumerate(np.asarray(arrays["hs_layers"]).tolist()):
            code, stride, padding, output_padding, relu, zero_point = row
            if not 0 <= code < len(_KINDS):
                raise ValueError(f"unknown layer code {code}")
            layers.append(Int8Layer(_KINDS[code], np.asarray(arrays[f"hs_weight_{i}"]),
                                    np.asarray(arrays[f"hs_bias_{i}"]), np.asarray(arrays[f"hs_multiplier_{i}"]),
                                    np.asarray(arrays[f"hs_shift_{i}"]), stride, padding, output_padding,
                                    bool(relu), zero_point))
        input_map = InputMap(np.asarray(arrays["hs_input_multiplier"]), np.asarray(arrays["hs_input_offset"]),
                             shift, np.asarray(arrays["hs_input_zero_point"]))
        return cls(layers, input_map, act_max=act_max, weight_max=weight_max, frac_bits=frac_bits,
                   scale_table=np.asarray(arrays["hs_scale_table"]),
                   scale_bound=float(np.asarray(arrays["hs_scale_bound"]).ravel()[0]), engine=engine)

    def fingerprint(self) -> bytes:
        """SHA-256 of `to_arrays()` in a fixed order: part of the model id."""
        arrays = self.to_arrays()
        return hash_arrays(arrays, sorted(arrays))
