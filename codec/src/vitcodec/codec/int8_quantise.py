"""Post-training quantisation of the trained float h_s into the 8-bit integer h_s (h_s format 2).

As in Jacob et al. (CVPR 2018), from activation ranges measured on real data (`HsCalibration`, gathered by the
exporter from the z of training images): every activation gets a scale, every layer's weights are folded
with their input's scales and quantised per output channel, biases go to accumulator units, and each layer's
scale ratio becomes an int32 multiplier and a shift. Torch-free: the exporter measures the ranges with the
float network, and this module only does arithmetic on them.

Choices (all free for the format, which stores the resulting integers), measured on the zoo's fmnist-q2
(coded bytes of 2,000 test images against the format-1 h_s, same CDF tables, calibrated on 2,000 fit images):
- activations in 0..255 (u8) and weights in -63..63 (s8): 2 * 255 * 63 < 2**15, so no int16 saturation (see
  `int8_gemm`): +0.05 %; 0..127 x -127..127 cost +0.23 %;
- one scale per activation tensor (input and hidden layers). Per-channel scales are free at run time (they
  fold into the next layer's weights) but cost rate: folded into the weights before these are quantised per
  output channel, a channel of small range loses its weights' resolution (+0.73 %,
  ``per_channel_activations=True``);
- hidden layers end in ReLU, so their zero point is 0 and the clamp at 0 is the ReLU; the z input gets a zero
  point per channel (its range always includes the real 0 that padding stands for);
- ranges are the calibration maxima: clipping a rare large activation costs more rate than the resolution
  a tighter range buys (with per-channel scales, 99.99th percentiles +0.68 %, 99.9th +1.1 %, 99th +21 %);
- weights symmetric, per output channel, |w| <= weight_max.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .int8_hyper_synthesis import InputMap, Int8HyperSynthesis, Int8Layer

__all__ = ["HsCalibration", "quantise", "requantisation_multiplier"]

_BIAS_LIMIT = 1 << 30  # |bias| in accumulator units stays below this (int32 with room)


@dataclass(frozen=True)
class HsCalibration:
    """Ranges of the float h_s on calibration data: ẑ per z channel (min, max) and, per hidden layer (every
    conv/deconv but the last), the per-channel maximum of its output after ReLU."""

    input_min: np.ndarray
    input_max: np.ndarray
    output_max: list[np.ndarray]


def requantisation_multiplier(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """real multipliers >= 0 -> (M0 in [2**30, 2**31) or smaller when the shift would pass 62, shift in 1..62)
    with real ≈ M0 * 2**-shift (31 significant bits)."""
    real = np.asarray(real, np.float64)
    if np.any(real < 0) or not np.all(np.isfinite(real)) or np.any(real >= 2.0**30):
        raise ValueError("requantisation multipliers must be finite and lie in [0, 2**30)")
    fraction, exponent = np.frexp(real)  # real = fraction * 2**exponent, fraction in [0.5, 1)
    multiplier = np.rint(fraction * 2.0**31).astype(np.int64)
    shift = 31 - exponent.astype(np.int64)
    carry = multiplier == 1 << 31
    multiplier[carry] >>= 1
    shift[carry] -= 1
    small = (shift > 62) | (real == 0)
    multiplier[small] = np.rint(real[small] * 2.0**62).astype(np.int64)
    shift[small] = 62
    return multiplier, shift


def _gemm_layers(layers: list[dict[str, Any]]) -> list[tuple[dict[str, Any], bool]]:
    """Float layer dicts (conv/deconv/relu, as `IntegerHyperSynthesis.from_float_layers` takes) -> (layer,
    followed by ReLU)."""
    out: list[tuple[dict[str, Any], bool]] = []
    for spec in layers:
        if spec["kind"] == "relu":
            if not out or out[-1][1]:
                raise ValueError("a ReLU must follow a conv or deconv layer")
            out[-1] = (out[-1][0], True)
        elif spec["kind"] in ("conv", "deconv"):
            out.append((spec, False))
        else:
            raise ValueError(f"unknown layer kind {spec['kind']!r}")
    if not out:
        raise ValueError("h_s needs at least one conv or deconv layer")
    if any(not relu for _, relu in out[:-1]) or out[-1][1]:
        raise ValueError("the 8-bit h_s needs a ReLU after every layer but the last, and none after the last")
    return out


def _input_map(calibration: HsCalibration, medians: np.ndarray, act_max: int, shift: int,
               per_channel: bool) -> tuple[InputMap, np.ndarray]:
    """Per z channel: the range (with 0 in it), its scale and zero point, as an integer map of the symbols."""
    lo = np.minimum(np.asarray(calibration.input_min, np.float64), 0.0)
    hi = np.maximum(np.asarray(calibration.input_max, np.float64), 0.0)
    span = hi - lo
    span = np.where(span > 0, span, 1.0)
    scale = span / act_max if per_channel else np.full(span.shape, span.max() / act_max)
    zero_point = np.clip(np.rint(-lo / scale), 0, act_max).astype(np.int64)
    multiplier = np.rint(2.0**shift / scale).astype(np.int64)
    offset = np.rint((np.asarray(medians, np.float64) / scale + zero_point) * 2.0**shift).astype(np.int64)
    return InputMap(multiplier, offset, shift, zero_point), scale


def quantise(layers: list[dict[str, Any]], scale_table: np.ndarray, medians: np.ndarray,
             calibration: HsCalibration, *, act_max: int = 255, weight_max: int = 63, frac_bits: int = 14,
             input_shift: int = 16, scale_bound: float = 0.11,
             per_channel_activations: bool = False) -> Int8HyperSynthesis:
    """The 8-bit h_s of a float h_s (layer dicts with float weights and biases) and its calibration ranges."""
    gemms = _gemm_layers(layers)
    if len(calibration.output_max) != len(gemms) - 1:
        raise ValueError(f"calibration has {len(calibration.output_max)} hidden-layer ranges, h_s has "
                         f"{len(gemms) - 1} hidden layers")
    input_map, in_scale = _input_map(calibration, medians, act_max, input_shift, per_channel_activations)
    out_layers = []
    for i, (spec, relu) in enumerate(gemms):
        conv = spec["kind"] == "conv"
        weight = np.asarray(spec["weight"], np.float64)
        out_axis, in_axis = (0, 1) if conv else (1, 0)
        out_ch = weight.shape[out_axis]
        bias = np.zeros(out_ch) if spec.get("bias") is None else np.asarray(spec["bias"], np.float64)
        if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))):
            raise ValueError("weights and biases must be finite")
        if weight.shape[in_axis] != in_scale.size:
            raise ValueError(f"layer {i} takes {weight.shape[in_axis]} channels, its input has {in_scale.size}")
        shape = [1, 1, 1, 1]
        shape[in_axis] = -1
        folded = weight * in_scale.reshape(shape)  # the input's per-channel scales, folded in
        reduce = tuple(a for a in range(4) if a != out_axis)
        w_scale = np.maximum(np.abs(folded).max(axis=reduce) / weight_max, np.abs(bias) / _BIAS_LIMIT)
        w_scale = np.where(w_scale > 0, w_scale, 1.0)  # an all-zero channel: any scale
        shape = [1, 1, 1, 1]
        shape[out_axis] = -1
        w_int = np.clip(np.rint(folded / w_scale.reshape(shape)), -weight_max, weight_max).astype(np.int8)
        b_int = np.rint(bias / w_scale).astype(np.int64)
        last = i == len(gemms) - 1
        if last:
            out_scale = np.full(out_ch, 2.0**-frac_bits)
        else:
            top = np.asarray(calibration.output_max[i], np.float64)
            if top.shape != (out_ch,):
                raise ValueError(f"calibration range {i} needs shape ({out_ch},), got {top.shape}")
            floor = max(float(top.max(initial=0.0)) * 1e-3, 1e-6)  # channels never active in calibration
            out_scale = np.maximum(top, floor) / act_max if per_channel_activations else \
                np.full(out_ch, max(float(top.max(initial=0.0)), 1e-6) / act_max)
        multiplier, shift = requantisation_multiplier(w_scale / out_scale)
        out_layers.append(Int8Layer(spec["kind"], w_int, b_int, multiplier, shift, int(spec.get("stride", 1)),
                                    int(spec.get("padding", 0)), int(spec.get("output_padding", 0)), relu, 0))
        in_scale = out_scale
    return Int8HyperSynthesis(out_layers, input_map, act_max=act_max, weight_max=weight_max, frac_bits=frac_bits,
                              scale_table=scale_table, scale_bound=scale_bound)
