"""Integer h_s: exact ops, closeness to the float h_s, compressai's index semantics, run-to-run identity."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from codec_fixtures import (
    entropy_bottleneck,
    export_tables,
    float_hs,
    gaussian_conditional,
    integer_hs,
    layer_dicts,
    random_z_symbols,
    torch,
)
from vitcodec.codec.fixed_point import ExactConv2d, ExactConvTranspose2d
from vitcodec.codec.integer_hyper_synthesis import IntegerHyperSynthesis

N, M = 8, 12


@pytest.fixture(scope="module")
def tables():
    return export_tables(entropy_bottleneck(N), gaussian_conditional())


@pytest.fixture(scope="module")
def float_model():
    return float_hs(N, M)


@pytest.fixture(scope="module")
def hyper(float_model, tables):
    return integer_hs(float_model, tables)


def z_fixed(hyper, tables, batch=3, hw=(3, 4), seed=0):
    rng = np.random.default_rng(seed)
    symbols = random_z_symbols(rng, (batch, N, *hw))
    return symbols, hyper.fixed_input(symbols, tables.z_medians)


@pytest.mark.parametrize(
    "k, s, p, op", [(5, 2, 2, 1), (3, 2, 1, 1), (4, 2, 1, 0), (5, 3, 2, 2), (3, 1, 1, 0), (2, 3, 0, 0)]
)
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (5, 4)])
def test_exact_ops_equal_torch_on_integers(k, s, p, op, hw):
    rng = np.random.default_rng(k * 100 + s * 10 + p)
    x = rng.integers(-(2**20), 2**20, (2, 3, *hw)).astype(np.float64)
    w = rng.integers(-(2**16), 2**16, (3, 4, k, k))
    conv_t = torch.nn.functional.conv_transpose2d
    ref = conv_t(torch.tensor(x), torch.tensor(w, dtype=torch.float64), stride=s, padding=p, output_padding=op)
    assert np.array_equal(ExactConvTranspose2d(w, s, p, op)(x), ref.numpy().astype(np.int64))
    if k <= min(hw) + 2 * p:
        wc = rng.integers(-(2**16), 2**16, (4, 3, k, k))
        ref = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(wc, dtype=torch.float64), stride=s, padding=p)
        assert np.array_equal(ExactConv2d(wc, s, p)(x), ref.numpy().astype(np.int64))


def fixed_point_error_bound(float_model, z_hat, weight_bits, act_bits):
    """Worst-case |integer - float| from weight, bias, input and requantisation rounding, layer by layer."""
    err = 2.0 ** -(act_bits + 1)  # medians rounded to act_bits
    x = z_hat
    for module in float_model:
        if isinstance(module, torch.nn.ReLU):
            x = module(x)
            continue
        w = module.weight.detach().numpy()
        per_out = np.abs(w).sum(axis=(1, 2, 3) if isinstance(module, torch.nn.Conv2d) else (0, 2, 3))
        fan_in = w[0].size if isinstance(module, torch.nn.Conv2d) else w[:, 0].size
        x_max = float(x.abs().max())
        err = (per_out.max() * err + fan_in * 2.0 ** -(weight_bits + 1) * (x_max + err)
               + 2.0 ** -(weight_bits + act_bits + 1) + 2.0 ** -(act_bits + 1))
        x = module(x)
    return err


@pytest.mark.parametrize("bits", [dict(weight_bits=16, act_bits=14), dict(weight_bits=10, act_bits=8)])
def test_close_to_float_torch_within_fixed_point_error(float_model, tables, bits):
    hyper = integer_hs(float_model, tables, **bits)
    symbols, fixed = z_fixed(hyper, tables)
    z_hat = torch.tensor(symbols + tables.z_medians.astype(np.float64)[None, :, None, None])
    with torch.no_grad():
        ref = float_model(z_hat).numpy()
        bound = fixed_point_error_bound(float_model, z_hat, **bits)
    scales, means = hyper.forward_float(fixed)
    err = max(np.abs(scales - ref[:, :M]).max(), np.abs(means - ref[:, M:]).max())
    assert err <= bound, (err, bound)
    if bits["weight_bits"] == 16:
        assert err < 1e-3


def test_scale_indexes_equal_compressai_build_indexes(hyper, tables):
    gc = gaussian_conditional()
    _, fixed = z_fixed(hyper, tables, batch=4, hw=(4, 4))
    out = hyper.forward(fixed)
    scales, _ = hyper.forward_float(fixed)
    assert np.abs(scales).max() < 2**9  # so the dequantised scales are exact in float32 too
    theirs = gc.build_indexes(torch.tensor(scales, dtype=torch.float32)).numpy()
    assert np.array_equal(out.scale_indexes, theirs)
    assert len(np.unique(out.scale_indexes)) > M and out.scale_indexes.min() == 0  # spans the table


def test_scale_index_semantics_at_the_thresholds(hyper, tables):
    """index = #(table[:-1] < max(scale, 0.11)); a scale equal to a table entry stays on that entry."""
    one = 1 << hyper.act_bits
    table = tables.scale_table
    exact = np.array([int(t * one) for t in table[:-1]])  # floor: just below or at each entry
    got_at = hyper.scale_indexes(exact)
    got_above = hyper.scale_indexes(exact + 1)
    gc = gaussian_conditional()
    ref = lambda v: gc.build_indexes(torch.tensor(v / one, dtype=torch.float64).float()).numpy()  # noqa: E731
    assert np.array_equal(got_at, ref(exact)) and np.array_equal(got_above, ref(exact + 1))
    assert hyper.scale_indexes(np.array([-(10**9), 0, 10**12])).tolist() == [0, 0, 63]


def test_same_result_for_any_batch_split(hyper, tables):
    _, fixed = z_fixed(hyper, tables, batch=5)
    whole = hyper.forward(fixed, (10, 15))
    for b in range(5):
        single = hyper.forward(fixed[b : b + 1], (10, 15))
        assert np.array_equal(single.scale_indexes[0], whole.scale_indexes[b])
        assert np.array_equal(single.means_fixed[0], whole.means_fixed[b])
    uncropped = hyper.forward(fixed)
    assert np.array_equal(uncropped.means_fixed[:, :, :10, :15], whole.means_fixed)


def test_same_result_for_any_blas_thread_count(hyper, tables, tmp_path):
    """Separate processes with 1 and 2 BLAS threads (and a different batch split) print the same digest."""
    path = tmp_path / "hs.npz"
    np.savez(path, **hyper.to_arrays())
    _, fixed = z_fixed(hyper, tables, batch=6, hw=(5, 6))
    np.save(tmp_path / "z.npy", fixed)
    script = textwrap.dedent(
        f"""
        import hashlib, sys, numpy as np
        from vitcodec.codec.integer_hyper_synthesis import IntegerHyperSynthesis
        with np.load({str(path)!r}) as f:
            hs = IntegerHyperSynthesis.from_arrays(dict(f))
        z = np.load({str(tmp_path / 'z.npy')!r})
        step = int(sys.argv[1])
        outs = [hs.forward(z[i:i + step]) for i in range(0, len(z), step)]
        idx = np.concatenate([o.scale_indexes for o in outs])
        means = np.concatenate([o.means_fixed for o in outs])
        print(hashlib.sha256(idx.tobytes() + means.tobytes()).hexdigest())
        """
    )
    digests = set()
    for threads, step in [("1", 1), ("2", 6)]:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        run = subprocess.run([sys.executable, "-c", script, str(step)], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        digests.add(run.stdout.strip())
    out = hyper.forward(fixed)
    here = hashlib.sha256(out.scale_indexes.tobytes() + out.means_fixed.tobytes()).hexdigest()
    assert digests == {here}


def test_arrays_round_trip(hyper, tables, tmp_path):
    arrays = hyper.to_arrays()
    assert all(v.dtype != np.int64 for k, v in arrays.items() if k.startswith("hs_weight"))  # stored narrow
    np.savez(tmp_path / "hs.npz", **arrays)
    with np.load(tmp_path / "hs.npz", allow_pickle=False) as f:
        again = IntegerHyperSynthesis.from_arrays(dict(f))
    assert again.fingerprint() == hyper.fingerprint()
    _, fixed = z_fixed(hyper, tables)
    assert np.array_equal(again.forward(fixed).means_fixed, hyper.forward(fixed).means_fixed)


def test_build_refuses_inexact_configurations(float_model, tables):
    with pytest.raises(ValueError, match="2\\*\\*53"):
        integer_hs(float_model, tables, weight_bits=24, act_bits=20)
    layers = layer_dicts(float_model)
    layers[-1] = dict(layers[-1], weight=layers[-1]["weight"][:-1], bias=layers[-1]["bias"][:-1])
    with pytest.raises(ValueError, match="2\\*M"):
        IntegerHyperSynthesis.from_float_layers(layers, tables.scale_table)  # odd channel count


def test_huge_z_is_clamped_not_crashing(hyper, tables):
    symbols = np.full((1, N, 2, 2), 2**30, dtype=np.int32)
    symbols[0, ::2] *= -1
    out = hyper.forward(hyper.fixed_input(symbols, tables.z_medians))
    again = hyper.forward(hyper.fixed_input(symbols, tables.z_medians))
    assert np.array_equal(out.means_fixed, again.means_fixed)
    assert out.scale_indexes.min() >= 0 and out.scale_indexes.max() <= 63
