"""Exact GEMM engines of the integer h_s: every engine, thread count and batch size gives the same integers as
a slow int64 reference written independently here (direct convolution by taps, no im2col, no phases)."""

from __future__ import annotations

import numpy as np
import pytest
from vitcodec.codec.exact_gemm import EXACT_LIMIT, Float64Gemm, Int8LimbGemm, default_engine, matmul_integer_model
from vitcodec.codec.fixed_point import ExactConv2d, ExactConvTranspose2d
from vitcodec.codec.integer_hyper_synthesis import IntegerHyperSynthesis
from vitcodec.codec.latent_codec import LatentCodec
from vitcodec.packages import resolve_model

ENGINES = {"float64": Float64Gemm(), "int8-1-thread": Int8LimbGemm(threads=1),
           "int8-2-threads": Int8LimbGemm(threads=2)}


def slow_conv2d(x: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """Direct int64 convolution (exact while every partial sum fits int64)."""
    b, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    out = np.zeros((b, o, oh, ow), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
    return out


def slow_conv_transpose2d(x: np.ndarray, w: np.ndarray, stride: int, padding: int, output_padding: int) -> np.ndarray:
    """Scatter form: input (y, x) adds w[:, :, i, j] at output (y*s + i - p, x*s + j - p)."""
    b, c, h, wd = x.shape
    _, o, kh, kw = w.shape
    oh = (h - 1) * stride - 2 * padding + kh + output_padding
    ow = (wd - 1) * stride - 2 * padding + kw + output_padding
    full = np.zeros((b, o, (h - 1) * stride + kh + output_padding, (wd - 1) * stride + kw + output_padding), np.int64)
    for i in range(kh):
        for j in range(kw):
            full[:, :, i : i + stride * (h - 1) + 1 : stride, j : j + stride * (wd - 1) + 1 : stride] += np.einsum(
                "bchw,co->bohw", x, w[:, :, i, j])
    return full[:, :, padding : padding + oh, padding : padding + ow]


def near_bound_operands(rng, x_shape, w_shape, per_output_axes, weight_bits=13, margin=0.999):
    """Random weights, and activations as large as the 2**53 accumulator bound allows (signed)."""
    w = rng.integers(-(2**weight_bits), 2**weight_bits, w_shape)
    abs_sum = int(np.abs(w).sum(axis=per_output_axes).max())
    x_max = int((EXACT_LIMIT - 1) // abs_sum * margin)
    x = rng.integers(-x_max, x_max + 1, x_shape)
    x.flat[0], x.flat[-1] = x_max, -x_max
    return x, w


def test_matmul_integer_bytes_are_the_onnx_graph_they_claim():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).integers(-63, 64, (300, 7)).astype(np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "exact_int8_gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["m", "k"])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, ["m", "n"])],
        initializer=[numpy_helper.from_array(weights, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)], producer_name="vitcodec")
    model.ir_version = 7
    onnx.checker.check_model(model)
    assert model.SerializeToString() == matmul_integer_model(weights)


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("k, s, p", [(3, 1, 1), (5, 2, 2), (3, 2, 0)])
def test_conv_equals_slow_reference_near_the_bound(engine, k, s, p):
    rng = np.random.default_rng(k * 10 + s)
    x, w = near_bound_operands(rng, (3, 6, 7, 6), (5, 6, k, k), (1, 2, 3))
    assert np.array_equal(ExactConv2d(w, s, p, ENGINES[engine])(x), slow_conv2d(x, w, s, p))


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("k, s, p, op", [(5, 2, 2, 1), (3, 2, 1, 1), (4, 2, 1, 0), (5, 3, 2, 2)])
def test_deconv_equals_slow_reference_near_the_bound(engine, k, s, p, op):
    rng = np.random.default_rng(k * 100 + s * 10 + p)
    # |w| summed over input channels and all taps bounds every phase's sum too
    x, w = near_bound_operands(rng, (2, 6, 4, 5), (6, 4, k, k), (0, 2, 3))
    got = ExactConvTranspose2d(w, s, p, op, ENGINES[engine])(x)
    assert np.array_equal(got, slow_conv_transpose2d(x, w, s, p, op))


def test_engines_refuse_operands_past_the_bound():
    w = np.full((2, 3, 3, 3), 1 << 20)
    x = np.full((1, 3, 4, 4), (EXACT_LIMIT >> 20) // 27 + 1)
    for engine in ENGINES.values():
        with pytest.raises(ValueError, match="2\\*\\*53"):
            ExactConv2d(w, 1, 1, engine)(x)


def test_int8_digits_stay_inside_the_saturation_free_range():
    """u8 activation digits <= 255 and |s8 weight digits| <= 63: a pair of products < 2**15 (vpmaddubsw)."""
    engine = Int8LimbGemm(threads=1)
    rng = np.random.default_rng(0)
    matrix = rng.integers(-(2**30), 2**30, (40, 7))
    prepared = engine.prepare(matrix)
    assert np.abs(prepared.digits).max() <= 63 and prepared.planes == 5
    planes, coefficients = engine.split(rng.integers(-(2**40), 2**40, (2, 3, 3, 4)))
    assert planes.dtype == np.uint8 and coefficients.size == 2 * 5
    assert 2 * 255 * 63 < 2**15 - 1
    with pytest.raises(ValueError, match="too long"):
        engine.prepare(np.ones((140_000, 1), np.int64))


@pytest.fixture(scope="module")
def zoo_codec() -> LatentCodec:
    """The zoo's tables with a format-1 h_s of the zoo's shapes (compressai's mean-scale h_s, N=64, M=128),
    weights drawn like a fresh network's: the zoo itself now ships the 8-bit h_s (format 2)."""
    tables = LatentCodec.load(resolve_model("fmnist-q2").file("codec")).tables
    rng = np.random.default_rng(11)

    def layer(kind: str, cin: int, cout: int, k: int, stride: int) -> dict:
        bound = 1.0 / np.sqrt(cin * k * k)
        shape = (cout, cin, k, k) if kind == "conv" else (cin, cout, k, k)
        return {"kind": kind, "weight": rng.uniform(-bound, bound, shape), "bias": rng.uniform(-bound, bound, cout),
                "stride": stride, "padding": k // 2, "output_padding": stride - 1}

    layers = [layer("deconv", 64, 128, 5, 2), {"kind": "relu"}, layer("deconv", 128, 192, 5, 2), {"kind": "relu"},
              layer("conv", 192, 256, 3, 1)]
    hyper = IntegerHyperSynthesis.from_float_layers(layers, tables.scale_table, weight_bits=11)
    return LatentCodec(tables, hyper)


def test_zoo_hs_identical_for_every_engine_thread_count_and_batch_size(zoo_codec):
    """Batch sizes 1..64, ORT intra-op threads 1 and 2, and the float64 reference: one answer."""
    hyper = zoo_codec.hyper
    rng = np.random.default_rng(7)
    z = rng.integers(-12, 13, (64, hyper.in_channels, 1, 1)).astype(np.int32)
    z[0] = 40  # large symbols reach more digit planes
    fixed = hyper.fixed_input(z, zoo_codec.tables.z_medians)
    reference = hyper.with_engine(Float64Gemm()).forward(fixed, (4, 4))
    for name, engine in ENGINES.items():
        h = hyper.with_engine(engine)
        for size in (1, 2, 5, 32, 64):
            parts = [h.forward(fixed[i : i + size], (4, 4)) for i in range(0, 64, size)]
            assert np.array_equal(np.concatenate([p.means_fixed for p in parts]), reference.means_fixed), (name, size)
            assert np.array_equal(np.concatenate([p.scale_indexes for p in parts]), reference.scale_indexes)


def test_default_engine_is_the_int8_one_here():
    assert isinstance(default_engine(), Int8LimbGemm)


def test_scale_index_lookup_equals_searchsorted(zoo_codec):
    """The bucket lookup behind scale_indexes counts thresholds exactly like searchsorted, at and around
    every threshold, below zero and far above the table."""
    hyper = zoo_codec.hyper
    t = hyper._thresholds
    rng = np.random.default_rng(3)
    values = np.concatenate([t - 1, t, t + 1, [-(2**40), -1, 0, 2**40, t[-1] * 7],
                             rng.integers(-(2**10), t[-1] + 2**12, 100_000)])
    expected = np.maximum(np.searchsorted(t, values, side="left"), hyper._always)
    assert hyper._index_lookup is not None
    assert np.array_equal(hyper.scale_indexes(values), expected)
