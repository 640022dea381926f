"""Real compressai entropy models and a float h_s, turned into codec inputs, shared by the codec tests.

(Tests may use torch and compressai; `codec/` itself never does.) A helper, not a test module: the test_codec_*
files import it by name (tests/ is on pytest's pythonpath); test_codec_entropy_coder.py checks that what it
exports is what compressai holds. A test module that imports it is skipped without torch and compressai.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
entropy_models = pytest.importorskip("compressai.entropy_models")

from vitcodec.codec.integer_hyper_synthesis import IntegerHyperSynthesis  # noqa: E402
from vitcodec.codec.tables import CodecTables  # noqa: E402

SCALE_TABLE = np.exp(np.linspace(np.log(0.11), np.log(256), 64))


def entropy_bottleneck(channels: int, seed: int = 0):
    """An EntropyBottleneck with per-channel densities, medians and widths (not the uniform default), updated."""
    torch.manual_seed(seed)
    eb = entropy_models.EntropyBottleneck(channels)
    with torch.no_grad():
        for name, param in eb.named_parameters():
            if name != "quantiles":
                param.add_(0.3 * torch.randn_like(param))
        width = torch.exp(torch.linspace(-1.0, 1.5, channels))[:, None]
        centre = torch.linspace(-2.0, 2.0, channels)[:, None] + 0.37
        eb.quantiles[:, 0, :] = centre + width * torch.tensor([-6.0, 0.0, 6.0])
    eb.update(force=True)
    return eb


def gaussian_conditional():
    gc = entropy_models.GaussianConditional(None)
    gc.update_scale_table(SCALE_TABLE.tolist())
    return gc


def export_tables(eb, gc) -> CodecTables:
    """What the torch side exports: integer buffers as they are, float32 scale table widened exactly."""
    return CodecTables(
        z_cdf=eb._quantized_cdf.numpy(),
        z_cdf_length=eb._cdf_length.numpy(),
        z_offset=eb._offset.numpy(),
        z_medians=eb.quantiles[:, 0, 1].detach().numpy(),
        y_cdf=gc._quantized_cdf.numpy(),
        y_cdf_length=gc._cdf_length.numpy(),
        y_offset=gc._offset.numpy(),
        scale_table=gc.scale_table.numpy().astype(np.float64),
    )


def float_hs(N: int, M: int, seed: int = 0):
    """The float h_s structure of models/hyperprior.py, randomly initialised, with scale biases spread over the
    table."""
    nn = torch.nn
    torch.manual_seed(seed)
    hs = nn.Sequential(
        nn.ConvTranspose2d(N, M, 5, stride=2, padding=2, output_padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(M, M * 3 // 2, 5, stride=2, padding=2, output_padding=1),
        nn.ReLU(),
        nn.Conv2d(M * 3 // 2, 2 * M, 3, stride=1, padding=1),
    ).double()
    with torch.no_grad():
        last = hs[4]
        last.weight.mul_(4.0)
        last.bias[:M] = torch.linspace(-0.5, 40.0, M, dtype=torch.float64)  # scales across the table
        last.bias[M:] = torch.linspace(-3.0, 3.0, M, dtype=torch.float64)  # means
    return hs


def layer_dicts(hs) -> list[dict]:
    """The float layer list `IntegerHyperSynthesis.from_float_layers` takes."""
    out = []
    for module in hs:
        if isinstance(module, torch.nn.ReLU):
            out.append({"kind": "relu"})
            continue
        out.append(
            {
                "kind": "deconv" if isinstance(module, torch.nn.ConvTranspose2d) else "conv",
                "weight": module.weight.detach().numpy(),
                "bias": module.bias.detach().numpy(),
                "stride": module.stride[0],
                "padding": module.padding[0],
                "output_padding": module.output_padding[0] if hasattr(module, "output_padding") else 0,
            }
        )
    return out


def integer_hs(hs, tables: CodecTables, **bits) -> IntegerHyperSynthesis:
    return IntegerHyperSynthesis.from_float_layers(layer_dicts(hs), tables.scale_table, **bits)


def random_z_symbols(rng: np.random.Generator, shape: tuple[int, ...], spread: float = 2.0) -> np.ndarray:
    return np.rint(rng.normal(0.0, spread, shape)).astype(np.int32)
