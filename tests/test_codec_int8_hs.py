"""The 8-bit h_s (format 2) against a slow integer reference written from its definitions, near its bounds:
saturation at the 8-bit limits, requantisation rounding at exact halves, negative values; independence of the
engine, batch split and thread count; refusals at build time; persistence and the format dispatch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from codec_fixtures import entropy_bottleneck, export_tables, float_hs, gaussian_conditional, layer_dicts, torch
from test_codec_exact_gemm import slow_conv2d, slow_conv_transpose2d
from vitcodec.codec.hyper_synthesis import hyper_from_arrays
from vitcodec.codec.int8_gemm import NumpyInt8Gemm, OrtInt8Gemm
from vitcodec.codec.int8_hyper_synthesis import SYMBOL_CLAMP, InputMap, Int8HyperSynthesis, Int8Layer
from vitcodec.codec.int8_quantise import HsCalibration, quantise, requantisation_multiplier
from vitcodec.codec.integer_hyper_synthesis import IntegerHyperSynthesis

if TYPE_CHECKING:
    from torch import Tensor

N, M = 8, 12
TABLE = np.exp(np.linspace(np.log(0.11), np.log(256), 64)).astype(np.float32).astype(np.float64)


def rs(v: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """floor((v + 2**(s-1)) / 2**s) with Python integers (object arrays): no int64 wrap, no float."""
    v = np.asarray(v, dtype=object)
    return (v + (1 << (np.asarray(shift, dtype=object) - 1))) // (2 ** np.asarray(shift, dtype=object))


def slow_reference(hs: Int8HyperSynthesis, symbols: np.ndarray, out_hw: tuple[int, int] | None) -> np.ndarray:
    """The module docstring's definitions, one by one, in Python integers and direct (scatter) convolutions
    on real-zero-centred values: no im2col, no phases, no zero-point folding."""
    m = hs.input_map
    s = np.clip(symbols.astype(object), -SYMBOL_CLAMP, SYMBOL_CLAMP)
    q = rs(s * m.multiplier.astype(object)[None, :, None, None] + m.offset.astype(object)[None, :, None, None], m.shift)
    q = np.clip(q, 0, hs.act_max)
    x = (q - m.zero_point.astype(object)[None, :, None, None]).astype(np.int64)  # real zero = 0: zero padding
    for i, layer in enumerate(hs.layers):
        w = layer.weight.astype(np.int64)
        if layer.kind == "conv":
            acc = slow_conv2d(x, w, layer.stride, layer.padding)
        else:
            acc = slow_conv_transpose2d(x, w, layer.stride, layer.padding, layer.output_padding)
        v = acc.astype(object) + layer.bias.astype(object)[None, :, None, None]
        out = rs(v * layer.multiplier.astype(object)[None, :, None, None], layer.shift[None, :, None, None])
        if i == len(hs.layers) - 1:
            x = out
            break
        out = out + layer.out_zero_point
        out = np.clip(out, layer.out_zero_point if layer.relu else 0, hs.act_max)
        x = (out - layer.out_zero_point).astype(np.int64)
    x = np.asarray(x, dtype=np.int64)
    return x if out_hw is None else x[:, :, : out_hw[0], : out_hw[1]]


@pytest.fixture(scope="module")
def tables():
    return export_tables(entropy_bottleneck(N), gaussian_conditional())


@pytest.fixture(scope="module")
def float_model():
    return float_hs(N, M)


def calibrate(float_model, z_hat: Tensor) -> HsCalibration:
    outputs, x = [], z_hat
    with torch.no_grad():
        for module in float_model:
            x = module(x)
            if isinstance(module, torch.nn.ReLU):
                outputs.append(x.amax(dim=(0, 2, 3)).numpy())
    return HsCalibration(z_hat.amin(dim=(0, 2, 3)).numpy(), z_hat.amax(dim=(0, 2, 3)).numpy(), outputs)


def symbols(rng, batch=4, hw=(3, 4), spread=2.0) -> np.ndarray:
    return np.rint(rng.normal(0.0, spread, (batch, N, *hw))).astype(np.int32)


@pytest.fixture(scope="module")
def quantised(float_model, tables):
    rng = np.random.default_rng(0)
    z_hat = torch.tensor(symbols(rng, 64) + tables.z_medians.astype(np.float64)[None, :, None, None])
    return quantise(layer_dicts(float_model), tables.scale_table, tables.z_medians, calibrate(float_model, z_hat))


def test_ptq_h_s_is_close_to_the_float_h_s(quantised, float_model, tables):
    sym = symbols(np.random.default_rng(1))
    with torch.no_grad():
        ref = float_model(torch.tensor(sym + tables.z_medians.astype(np.float64)[None, :, None, None])).numpy()
    scales, means = quantised.forward_float(quantised.fixed_input(sym, tables.z_medians))
    err = max(np.abs(scales - ref[:, :M]).max(), np.abs(means - ref[:, M:]).max())
    assert err < 0.02 * np.abs(ref).max(), err


@pytest.mark.parametrize("out_hw", [None, (10, 15), (1, 1)])
def test_equals_the_slow_reference_with_saturation_and_negative_values(quantised, tables, out_hw):
    rng = np.random.default_rng(2)
    sym = symbols(rng, spread=6.0)  # wider than the calibration: inputs and activations saturate
    sym[0, :, 0, 0] = 2**30  # clamped at 2**20 before the map, then at act_max
    sym[1, :, 1, 1] = -(2**30)
    sym[2] = np.iinfo(np.int32).max
    q = quantised.fixed_input(sym, tables.z_medians)
    assert q.min() == 0 and q.max() == quantised.act_max  # both ends of the u8 range reached
    out = quantised.forward(q, out_hw)
    ref = slow_reference(quantised, sym, out_hw)
    assert np.array_equal(out.means_fixed, ref[:, M:])
    assert out.means_fixed.min() < 0 < out.means_fixed.max()
    assert np.array_equal(out.scale_indexes, quantised.scale_indexes(ref[:, :M]))


def identity_hs(multiplier: int, shift: int, bias: np.ndarray, relu_zero_point: int = 0,
                hidden_shift: int = 30) -> Int8HyperSynthesis:
    """1x1 convs with identity weights: the requantisation alone decides the output (channels: M = 1).
    The hidden layer multiplies by 2**(30 - hidden_shift)."""
    eye = np.eye(2, dtype=np.int8).reshape(2, 2, 1, 1)
    hidden = Int8Layer("conv", eye, np.zeros(2), [1 << 30] * 2, [hidden_shift] * 2, relu=True,
                       out_zero_point=relu_zero_point)
    last = Int8Layer("conv", eye, bias, [multiplier] * 2, [shift] * 2)
    input_map = InputMap(np.array([2, 2]), np.array([2 * 5, 2 * 5]), 1, np.array([5, 5]))  # q = symbol + 5
    return Int8HyperSynthesis([hidden, last], input_map, act_max=127, weight_max=127, frac_bits=0,
                              scale_table=TABLE)


def test_requantisation_rounds_exact_halves_up_for_every_sign():
    """v * 2**30 >> 31 is v / 2: halves round up (towards +inf), so -0.5 -> 0, -1.5 -> -1, 0.5 -> 1."""
    hs = identity_hs(1 << 30, 31, np.array([-7, -7]))
    sym = np.arange(-5, 15, dtype=np.int32).reshape(1, 1, 1, -1).repeat(2, axis=1)
    out = hs.forward(hs.fixed_input(sym), None).means_fixed[0, 0, 0]
    v = np.clip(np.arange(-5, 15), 0, 122) - 7  # the hidden layer is a ReLU here; then the bias
    assert out.tolist() == [int(np.floor(x / 2 + 0.5)) for x in v]
    assert np.array_equal(hs.forward(hs.fixed_input(sym)).means_fixed, slow_reference(hs, sym, None)[:, 1:])
    halves = {int(x): int(o) for x, o in zip(v, out) if x % 2}
    assert halves[-1] == 0 and halves[1] == 1 and halves[-7] == -3 and halves[3] == 2


def test_hidden_layers_saturate_at_the_8_bit_limits():
    hs = identity_hs(1 << 30, 30, np.array([0, 0]), relu_zero_point=3, hidden_shift=29)
    sym = np.array([-(2**30), -9, -5, 0, 1, 30, 100, 200, 2**30], np.int32).reshape(1, 1, 1, -1).repeat(2, axis=1)
    q = hs.fixed_input(sym)
    assert q[0, 0, 0].tolist() == [0, 0, 0, 5, 6, 35, 105, 127, 127]  # symbol + 5 in 0..127
    out = hs.forward(q).means_fixed[0, 0, 0]
    # hidden: clamp(2 * (q - 5) + 3, 3, 127) - 3, its zero point standing for real 0
    assert out.tolist() == [0, 0, 0, 0, 2, 60, 124, 124, 124]
    assert np.array_equal(hs.forward(q).means_fixed, slow_reference(hs, sym, None)[:, 1:])


def test_same_integers_for_every_engine_batch_split_and_thread_count(quantised, tables):
    sym = symbols(np.random.default_rng(3), batch=33, hw=(2, 3), spread=4.0)
    q = quantised.fixed_input(sym, tables.z_medians)
    reference = quantised.with_engine(NumpyInt8Gemm()).forward(q, (7, 10))
    for engine in (OrtInt8Gemm(threads=1), OrtInt8Gemm(threads=2), NumpyInt8Gemm()):
        hs = quantised.with_engine(engine)
        for size in (1, 4, 33):
            parts = [hs.forward(q[i : i + size], (7, 10)) for i in range(0, 33, size)]
            assert np.array_equal(np.concatenate([p.means_fixed for p in parts]), reference.means_fixed)
            assert np.array_equal(np.concatenate([p.scale_indexes for p in parts]), reference.scale_indexes)


def test_build_refuses_what_could_overflow_or_saturate(quantised):
    layers, input_map = quantised.layers, quantised.input_map
    with pytest.raises(ValueError, match="2\\*\\*15"):
        Int8HyperSynthesis(layers, input_map, act_max=255, weight_max=127, frac_bits=14, scale_table=TABLE)
    with pytest.raises(ValueError, match="weight_max"):
        Int8HyperSynthesis(layers, input_map, act_max=127, weight_max=60, frac_bits=14, scale_table=TABLE)
    long_k = Int8Layer("conv", np.ones((2, 140_000 // 9 + 1, 3, 3), np.int8), np.zeros(2), [1 << 30] * 2, [40] * 2)
    wide_map = InputMap(np.ones(long_k.in_channels), np.zeros(long_k.in_channels), 1, np.zeros(long_k.in_channels))
    with pytest.raises(ValueError, match="2\\*\\*31"):
        Int8HyperSynthesis([long_k], wide_map, act_max=127, weight_max=127, frac_bits=0, scale_table=TABLE)
    # the largest operands the other checks let through still requantise inside int64 (|v| < 2**32, M0 < 2**31)
    big = Int8Layer("conv", np.full((2, 8, 3, 3), 127, np.int8), np.full(2, 2**31 - 1), [2**31 - 1] * 2, [62] * 2)
    extreme = InputMap(np.ones(8), np.zeros(8), 1, np.zeros(8))
    hs = Int8HyperSynthesis([big], extreme, act_max=127, weight_max=127, frac_bits=0, scale_table=TABLE)
    sym = np.full((1, 8, 3, 3), 2**20, np.int32)
    assert np.array_equal(hs.forward(hs.fixed_input(sym)).means_fixed, slow_reference(hs, sym, None)[:, 1:])
    with pytest.raises(ValueError, match="int32"):
        Int8HyperSynthesis([Int8Layer("conv", big.weight, np.full(2, 2**31), big.multiplier, big.shift)], extreme,
                           act_max=127, weight_max=127, frac_bits=0, scale_table=TABLE)


def test_requantisation_multiplier_keeps_31_bits():
    real = np.array([0.0, 1e-20, 3e-7, 0.5, 0.75, 1.0, 123.456, 2.0**29])
    m, s = requantisation_multiplier(real)
    assert np.all((s >= 1) & (s <= 62)) and np.all(m < 2**31)
    approx = m.astype(np.float64) * 2.0 ** -s.astype(np.float64)
    big = real > 1e-9
    assert np.all(np.abs(approx[big] - real[big]) <= real[big] * 2.0**-30)
    with pytest.raises(ValueError):
        requantisation_multiplier(np.array([2.0**30]))


def test_arrays_round_trip_and_dispatch_by_format(quantised, tables, tmp_path):
    arrays = quantised.to_arrays()
    assert arrays["hs_format"][0] == 2 and arrays["hs_weight_0"].dtype == np.int8
    np.savez(tmp_path / "hs.npz", **arrays)
    with np.load(tmp_path / "hs.npz", allow_pickle=False) as f:
        again = hyper_from_arrays(dict(f))
    assert isinstance(again, Int8HyperSynthesis) and again.fingerprint() == quantised.fingerprint()
    q = quantised.fixed_input(symbols(np.random.default_rng(4)), tables.z_medians)
    assert np.array_equal(again.forward(q).means_fixed, quantised.forward(q).means_fixed)
    old = IntegerHyperSynthesis.from_float_layers(layer_dicts(float_hs(N, M)), tables.scale_table)
    assert isinstance(hyper_from_arrays(old.to_arrays()), IntegerHyperSynthesis)
    with pytest.raises(ValueError, match="format 7"):
        hyper_from_arrays({**arrays, "hs_format": np.array([7])})
