"""Integer hyper-synthesis h_s: the entropy parameters of y, bit-identical on every machine.

The range decoder only works if the decoder uses exactly the CDF row the encoder used for every y symbol.
A float h_s cannot promise that across runtimes (torch vs ONNX Runtime, CPU vs GPU: docs/architecture.md,
"Data flow"), so after training the float h_s is frozen into fixed point and run here, by edge and cloud alike::

    z symbols ──► ẑ = symbols + medians          (act_bits fractional bits)
      └─► [deconv | conv] ─► + bias ─► round-shift ─► ReLU ─► clamp ─► ... ─► (scales ‖ means)
    scales ──► integer comparisons with the scale table ──► scale indexes (compressai's build_indexes)
    means  ──► means_fixed / 2**act_bits (an exact float64)

Fixed point: weights are integers with `weight_bits` fractional bits, activations with `act_bits`; every
GEMM input is clamped to |a| <= act_limit (real units); biases carry weight_bits + act_bits fractional bits
and are added to the exact accumulator, which is then shifted back by weight_bits with round-half-up.
Exactness: at build time we check  max_abs_weight_sum(layer) * act_limit * 2**act_bits < 2**53  for every
layer, which bounds sum_k |x_k| |w_k| for every output; that bound is all the GEMM engines of `exact_gemm`
need (int8 digit planes through ONNX Runtime's MatMulInteger by default, integer-valued float64 BLAS as the
reference) to return exact integers in any summation order, so results do not depend on the engine, batch
size, thread count or CPU. Bias, round-shift, ReLU and clamp run on int64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import fixed_point
from .exact_gemm import ExactGemm, default_engine
from .scale_index import HyperOutput, ScaleIndexer
from .tables import hash_arrays

__all__ = ["FixedLayer", "HyperOutput", "IntegerHyperSynthesis"]

_KINDS = ("conv", "deconv", "relu")
_FORMAT = 1  # layout of `to_arrays`
_MAX_BITS = 30


def _compact(values: np.ndarray) -> np.ndarray:
    """The narrowest of int16/int32/int64 that holds the values: model packages stay small (a rule of the
    values alone, so the fingerprint of a loaded model equals that of the exported one)."""
    for dtype in (np.int16, np.int32):
        info = np.iinfo(dtype)
        if values.size == 0 or (values.min() >= info.min and values.max() <= info.max):
            return values.astype(dtype)
    return values.astype(np.int64)


def _weight_bias(layer: FixedLayer) -> tuple[np.ndarray, np.ndarray]:
    """A conv or deconv layer's weight and bias (every such layer has both once checked)."""
    if layer.weight is None or layer.bias is None:
        raise ValueError(f"{layer.kind} layer needs a weight and a bias")
    return layer.weight, layer.bias


@dataclass(frozen=True)
class FixedLayer:
    """One layer in fixed point. weight is int64 in PyTorch layout (conv: out,in,kh,kw; deconv: in,out,kh,kw);
    bias int64 with weight_bits + act_bits fractional bits. ReLU has neither."""

    kind: str
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    stride: int = 1
    padding: int = 0
    output_padding: int = 0

    @property
    def in_channels(self) -> int:
        assert self.weight is not None
        return int(self.weight.shape[1] if self.kind == "conv" else self.weight.shape[0])

    @property
    def out_channels(self) -> int:
        assert self.weight is not None
        return int(self.weight.shape[0] if self.kind == "conv" else self.weight.shape[1])


class IntegerHyperSynthesis:
    """Fixed-point h_s with integer-only semantics (see module docstring).

    Build it with `from_float_layers` from the trained float layers, or `from_arrays` from a saved model.
    """

    def __init__(
        self,
        layers: list[FixedLayer],
        *,
        weight_bits: int,
        act_bits: int,
        act_limit: int,
        scale_table: np.ndarray,
        scale_bound: float = 0.11,
        engine: ExactGemm | None = None,
    ) -> None:
        if not (0 <= weight_bits <= _MAX_BITS and 0 <= act_bits <= _MAX_BITS):
            raise ValueError(f"weight_bits and act_bits must lie in 0..{_MAX_BITS}")
        if not isinstance(act_limit, (int, np.integer)) or act_limit < 1:
            raise ValueError("act_limit must be a positive integer")
        self.weight_bits, self.act_bits, self.act_limit = int(weight_bits), int(act_bits), int(act_limit)
        self._clamp = self.act_limit << self.act_bits  # |GEMM input| bound in fixed point
        self.layers = [self._checked(layer) for layer in layers]
        gemms = [layer for layer in self.layers if layer.kind != "relu"]
        if not gemms:
            raise ValueError("h_s needs at least one conv or deconv layer")
        for prev, nxt in zip(gemms, gemms[1:]):
            if prev.out_channels != nxt.in_channels:
                raise ValueError(f"layer gives {prev.out_channels} channels, next layer takes {nxt.in_channels}")
        if gemms[-1].out_channels % 2:
            raise ValueError("last layer must give 2*M channels (scales then means)")
        self.in_channels = gemms[0].in_channels
        self.M = gemms[-1].out_channels // 2
        self.upsampling = math.prod(layer.stride for layer in gemms if layer.kind == "deconv")
        self.engine = engine or default_engine()
        self._ops = [self._op(layer, self.engine) for layer in self.layers]
        self._biases = [None if layer.bias is None else layer.bias.copy() for layer in self.layers]
        self.accumulator_bound = self._check_exactness()

        self._indexer = ScaleIndexer(scale_table, scale_bound, self.act_bits)
        self.scale_table, self.scale_bound = self._indexer.scale_table, self._indexer.scale_bound
        self._thresholds, self._always = self._indexer.thresholds, self._indexer.always
        self._index_lookup = self._indexer.lookup

    # --- construction ---------------------------------------------------------------------------------

    @staticmethod
    def _checked(layer: FixedLayer) -> FixedLayer:
        if layer.kind not in _KINDS:
            raise ValueError(f"unknown layer kind {layer.kind!r} (expected one of {_KINDS})")
        if layer.kind == "relu":
            return FixedLayer("relu")
        if layer.weight is None or np.asarray(layer.weight).ndim != 4:
            raise ValueError(f"{layer.kind} layer needs a 4-D weight")
        weight = np.array(layer.weight, dtype=np.int64, order="C")  # own copies: frozen below
        weight.setflags(write=False)
        out_ch = weight.shape[0] if layer.kind == "conv" else weight.shape[1]
        bias = np.zeros(out_ch, np.int64) if layer.bias is None else np.array(layer.bias, dtype=np.int64)
        if bias.shape != (out_ch,):
            raise ValueError(f"bias needs shape ({out_ch},), got {bias.shape}")
        bias.setflags(write=False)
        if layer.stride < 1 or layer.padding < 0 or layer.output_padding < 0:
            raise ValueError("stride must be >= 1, padding and output_padding >= 0")
        if layer.kind == "conv" and layer.output_padding:
            raise ValueError("conv layers have no output_padding")
        return FixedLayer(layer.kind, weight, bias, int(layer.stride), int(layer.padding), int(layer.output_padding))

    @staticmethod
    def _op(
        layer: FixedLayer, engine: ExactGemm
    ) -> fixed_point.ExactConv2d | fixed_point.ExactConvTranspose2d | None:
        if layer.kind == "conv":
            weight, _ = _weight_bias(layer)
            return fixed_point.ExactConv2d(weight, layer.stride, layer.padding, engine)
        if layer.kind == "deconv":
            weight, _ = _weight_bias(layer)
            return fixed_point.ExactConvTranspose2d(weight, layer.stride, layer.padding, layer.output_padding, engine)
        return None

    def with_engine(self, engine: ExactGemm) -> IntegerHyperSynthesis:
        """The same h_s computed by another exact GEMM engine (same results; e.g. the float64 reference)."""
        return IntegerHyperSynthesis(self.layers, weight_bits=self.weight_bits, act_bits=self.act_bits,
                                     act_limit=self.act_limit, scale_table=self.scale_table,
                                     scale_bound=self.scale_bound, engine=engine)

    def _check_exactness(self) -> int:
        """Prove |every partial sum| < 2**53 (see module docstring); returns the largest bound found."""
        worst = 0
        for i, (layer, op) in enumerate(zip(self.layers, self._ops)):
            if op is None:
                continue
            bound = op.max_abs_weight_sum * self._clamp
            if bound >= fixed_point.EXACT_LIMIT:
                raise ValueError(
                    f"layer {i}: sum|w| * act_limit * 2**act_bits = {bound} reaches 2**53, so float64 GEMMs "
                    "would round; lower weight_bits, act_bits or act_limit"
                )
            _, bias = _weight_bias(layer)
            if int(np.abs(bias).max(initial=0)) >= 1 << 60:
                raise ValueError(f"layer {i}: bias too large for int64 accumulation")
            worst = max(worst, bound)
        return worst

    @classmethod
    def from_float_layers(
        cls,
        layers: list[dict],
        scale_table: np.ndarray,
        *,
        weight_bits: int = 16,
        act_bits: int = 14,
        act_limit: int = 4096,
        scale_bound: float = 0.11,
    ) -> IntegerHyperSynthesis:
        """Quantise a trained float h_s given as dicts: kind 'conv'|'deconv'|'relu', weight (PyTorch layout),
        bias, stride, padding, output_padding. Weights round to weight_bits, biases to weight_bits+act_bits."""
        fixed = []
        for spec in layers:
            kind = spec["kind"]
            if kind == "relu":
                fixed.append(FixedLayer("relu"))
                continue
            weight = np.asarray(spec["weight"], dtype=np.float64)
            bias = np.zeros(weight.shape[0 if kind == "conv" else 1]) if spec.get("bias") is None else spec["bias"]
            bias = np.asarray(bias, dtype=np.float64)
            if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))):
                raise ValueError("weights and biases must be finite")
            w_int = np.rint(weight * 2.0**weight_bits)
            b_int = np.rint(bias * 2.0 ** (weight_bits + act_bits))
            if np.abs(w_int).max(initial=0) >= 2**52 or np.abs(b_int).max(initial=0) >= 2**60:
                raise ValueError("weights or biases too large for the chosen fixed-point bits")
            fixed.append(
                FixedLayer(
                    kind,
                    w_int.astype(np.int64),
                    b_int.astype(np.int64),
                    int(spec.get("stride", 1)),
                    int(spec.get("padding", 0)),
                    int(spec.get("output_padding", 0)),
                )
            )
        return cls(
            fixed,
            weight_bits=weight_bits,
            act_bits=act_bits,
            act_limit=act_limit,
            scale_table=scale_table,
            scale_bound=scale_bound,
        )

    # --- running --------------------------------------------------------------------------------------

    def fixed_input(self, z_symbols: np.ndarray, medians: np.ndarray) -> np.ndarray:
        """ẑ in fixed point: symbols * 2**act_bits + round(medians * 2**act_bits), for (B, N, h, w) symbols."""
        symbols = np.asarray(z_symbols)
        if symbols.dtype.kind not in "iu":
            raise ValueError("z symbols must be integers")
        med = np.rint(np.asarray(medians, dtype=np.float64) * float(1 << self.act_bits)).astype(np.int64)
        return (symbols.astype(np.int64) << self.act_bits) + med.reshape(1, -1, 1, 1)

    def output_size(self, z_hw: tuple[int, int]) -> tuple[int, int]:
        """Spatial size of h_s's output for a z of size z_hw (before any crop)."""
        height, width = z_hw
        for op in self._ops:
            if op is not None:
                height, width = op.out_size(height, width)
        return height, width

    def _run(self, z_hat_fixed: np.ndarray, out_hw: tuple[int, int] | None) -> np.ndarray:
        x = np.asarray(z_hat_fixed)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"z_hat_fixed must be (B, {self.in_channels}, h, w), got {x.shape}")
        if x.dtype.kind not in "iu":
            raise ValueError("z_hat_fixed must be an integer array")
        z_hw = (x.shape[2], x.shape[3])
        full_hw = self.output_size(z_hw)
        if out_hw is not None and (out_hw[0] > full_hw[0] or out_hw[1] > full_hw[1] or min(out_hw) < 1):
            raise ValueError(f"crop {out_hw} does not fit h_s output {full_hw}")
        sizes = self._sizes(z_hw, out_hw)
        act = x.astype(np.int64).transpose(0, 2, 3, 1)  # channels-last: bias and GEMM rows line up
        rounding = 1 << self.weight_bits >> 1  # round half up: floor((acc + bias + 2**(wb-1)) / 2**wb)
        for op, size, bias in zip(self._ops, sizes, self._biases):
            if op is None:  # ReLU
                np.maximum(act, 0, out=act)
                continue
            if bias is None:  # never: every conv/deconv layer has a bias once checked
                raise RuntimeError("conv/deconv layer without a bias")
            act = np.clip(act, -self._clamp, self._clamp, out=act)
            acc = op.nhwc(act, size)  # only the `size` the rest reads
            acc += bias + rounding
            act = np.right_shift(acc, self.weight_bits, out=acc)
        if out_hw is not None:
            act = act[:, : out_hw[0], : out_hw[1]]
        return np.ascontiguousarray(act.transpose(0, 3, 1, 2))

    def _sizes(self, z_hw: tuple[int, int], out_hw: tuple[int, int] | None) -> list[tuple[int, int]]:
        """Per layer, the top-left output part that later layers (and the final crop) read: a conv output o
        reads inputs up to o * stride + kernel - 1 - padding, so rows past that are never computed."""
        full = [z_hw]
        for op in self._ops:
            full.append(full[-1] if op is None else op.out_size(*full[-1]))
        need = list(out_hw) if out_hw is not None else list(full[-1])
        sizes: list[tuple[int, int]] = []
        for i in range(len(self._ops) - 1, -1, -1):
            op = self._ops[i]
            need = [min(n, f) for n, f in zip(need, full[i + 1])]
            sizes.append((need[0], need[1]))
            if isinstance(op, fixed_point.ExactConv2d):
                need = [(need[0] - 1) * op.stride + op.kh - op.padding, (need[1] - 1) * op.stride + op.kw - op.padding]
            elif op is not None:  # transposed conv: no input cropping
                need = list(full[i])
        return sizes[::-1]

    def scale_indexes(self, scales_fixed: np.ndarray) -> np.ndarray:
        """compressai's `build_indexes` on scale = scales_fixed / 2**act_bits, in integers only:
        index = number of scale_table[:-1] entries strictly below max(scale, scale_bound)."""
        return self._indexer(scales_fixed)

    def forward(self, z_hat_fixed: np.ndarray, out_hw: tuple[int, int] | None = None) -> HyperOutput:
        """Scale indexes and fixed-point means for a batch of ẑ (B, N, hz, wz), cropped top-left to out_hw."""
        out = self._run(z_hat_fixed, out_hw)
        return HyperOutput(self.scale_indexes(out[:, : self.M]), np.ascontiguousarray(out[:, self.M :]), self.act_bits)

    def forward_float(
        self, z_hat_fixed: np.ndarray, out_hw: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Dequantised (scales, means) as float64, e.g. for the torch side to price the integer h_s's rate
        against the float one. Scales are not lower-bounded here, as the float module's output is not."""
        out = self._run(z_hat_fixed, out_hw).astype(np.float64) / float(1 << self.act_bits)
        return out[:, : self.M], out[:, self.M :]

    # --- persistence ----------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (keys prefixed hs_) that `from_arrays` reads back; safe to merge into a tables .npz."""
        kinds = {kind: code for code, kind in enumerate(_KINDS)}
        arrays: dict[str, np.ndarray] = {
            "hs_format": np.array([_FORMAT], np.int64),
            "hs_config": np.array([self.weight_bits, self.act_bits, self.act_limit], np.int64),
            "hs_layers": np.array(
                [[kinds[layer.kind], layer.stride, layer.padding, layer.output_padding] for layer in self.layers],
                np.int64,
            ).reshape(-1, 4),
            "hs_scale_table": self.scale_table,
            "hs_scale_bound": np.array([self.scale_bound], np.float64),
        }
        for i, layer in enumerate(self.layers):
            if layer.kind != "relu":
                weight, bias = _weight_bias(layer)
                arrays[f"hs_weight_{i}"] = _compact(weight)
                arrays[f"hs_bias_{i}"] = _compact(bias)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> IntegerHyperSynthesis:
        if "hs_format" not in arrays:
            raise ValueError("arrays hold no integer h_s (no hs_format)")
        if int(np.asarray(arrays["hs_format"]).ravel()[0]) != _FORMAT:
            raise ValueError(f"integer h_s format {int(arrays['hs_format'][0])} is not {_FORMAT}")
        weight_bits, act_bits, act_limit = (int(v) for v in np.asarray(arrays["hs_config"]).ravel())
        layers = []
        for i, (code, stride, padding, output_padding) in enumerate(np.asarray(arrays["hs_layers"]).tolist()):
            if not 0 <= code < len(_KINDS):
                raise ValueError(f"unknown layer code {code}")
            kind = _KINDS[code]
            if kind == "relu":
                layers.append(FixedLayer("relu"))
            else:
                layers.append(
                    FixedLayer(kind, np.asarray(arrays[f"hs_weight_{i}"]), np.asarray(arrays[f"hs_bias_{i}"]),
                               stride, padding, output_padding)
                )
        return cls(
            layers,
            weight_bits=weight_bits,
            act_bits=act_bits,
            act_limit=act_limit,
            scale_table=np.asarray(arrays["hs_scale_table"]),
            scale_bound=float(np.asarray(arrays["hs_scale_bound"]).ravel()[0]),
        )

    def fingerprint(self) -> bytes:
        """SHA-256 of `to_arrays()` in a fixed order: part of the model id."""
        arrays = self.to_arrays()
        return hash_arrays(arrays, sorted(arrays))
