"""The trained float h_s made exact for the package: the 8-bit h_s (format 2, the default) by post-training
quantisation calibrated on real z, or the older wide fixed-point h_s (format 1).

Calibration measures the float h_s's activation ranges on ẑ = rint(z - medians) + medians, with z from the
network's own g_a + h_a on training images fitted exactly as the edge fits them (`vitcodec.edge.preprocess`).
Without images (random networks in tests and benchmarks) ẑ is drawn from the learned z prior itself (the
z CDF tables), which gives each channel the spread the entropy model expects.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from vitcodec.codec.int8_hyper_synthesis import Int8HyperSynthesis
from vitcodec.codec.int8_quantise import HsCalibration, quantise
from vitcodec.codec.integer_hyper_synthesis import IntegerHyperSynthesis
from vitcodec.codec.tables import CodecTables
from vitcodec.models.jcc import EdgeAnalysis, JointCompressionClassifier
from vitcodec.packages import InputSpec

HS_FORMATS = ("int8", "fixed")  # h_s formats 2 and 1 (`vitcodec.codec.hyper_synthesis`)
HS_WEIGHT_BITS = 11  # format 1: int16 storage halves the package, the rate cost is unmeasurable
CALIBRATION_IMAGES = 2000  # images of the fit split whose z calibrate the 8-bit h_s
_PRIOR_SAMPLES = (64, 4, 4)  # ẑ drawn from the z prior when there are no images: batch, height, width


def hyper_synthesis_layers(model: JointCompressionClassifier) -> list[dict[str, Any]]:
    """The float h_s as plain layer dicts (conv/deconv/relu), what both quantisers take."""
    layers: list[dict[str, Any]] = []
    for module in model.hyperprior.h_s:
        if isinstance(module, nn.ReLU):
            layers.append({"kind": "relu"})
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            deconv = isinstance(module, nn.ConvTranspose2d)
            layers.append({
                "kind": "deconv" if deconv else "conv",
                "weight": module.weight.detach().double().cpu().numpy(),
                "bias": None if module.bias is None else module.bias.detach().double().cpu().numpy(),
                "stride": module.stride[0], "padding": module.padding[0],
                "output_padding": module.output_padding[0] if deconv else 0,
            })
        else:
            raise TypeError(f"h_s layer {type(module).__name__} has no integer twin")
    return layers


def encoded_z_hat(encode_z: Callable[[np.ndarray], np.ndarray], spec: InputSpec, tables: CodecTables,
                  images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """ẑ (float64) of uint8 images fitted and normalised as the edge does, through ``encode_z`` (normalised
    batch -> z), rounded as `LatentCodec.encode` rounds z. One loop for the torch network and an ONNX encoder."""
    from vitcodec.edge.preprocess import normalise, to_batch

    medians = tables.z_medians.astype(np.float64).reshape(1, -1, 1, 1)
    parts = []
    for start in range(0, len(images), batch_size):
        z = np.asarray(encode_z(normalise(to_batch(images[start:start + batch_size], spec), spec)), np.float64)
        parts.append(np.rint(z - medians) + medians)
    return torch.from_numpy(np.concatenate(parts))


@torch.no_grad()
def image_z_hat(model: JointCompressionClassifier, tables: CodecTables, images: np.ndarray,
                batch_size: int = 256) -> torch.Tensor:
    """ẑ (float64) of uint8 images through the network's g_a + h_a."""
    encoder = EdgeAnalysis(model).eval().cpu()
    return encoded_z_hat(lambda x: encoder(torch.from_numpy(x))[1].numpy(), model.config.input_spec(), tables,
                         images, batch_size)


def prior_z_hat(tables: CodecTables, seed: int = 0) -> torch.Tensor:
    """ẑ drawn from the learned z prior: per channel, symbols by the probabilities of its CDF row (escape
    excluded), plus the median."""
    rng = np.random.default_rng(seed)
    batch, height, width = _PRIOR_SAMPLES
    out = np.empty((batch, tables.z_channels, height, width))
    for c in range(tables.z_channels):
        n = int(tables.z_cdf_length[c])
        pmf = np.diff(tables.z_cdf[c, : n - 1].astype(np.float64))  # values 0..n-3; n-2 is the escape
        pmf = pmf / pmf.sum() if pmf.sum() > 0 else np.full(pmf.size, 1.0 / pmf.size)
        values = rng.choice(pmf.size, size=(batch, height, width), p=pmf) + int(tables.z_offset[c])
        out[:, c] = values + float(tables.z_medians[c])
    return torch.from_numpy(out)


@torch.no_grad()
def hs_calibration(float_h_s: nn.Sequential, z_hat: torch.Tensor) -> HsCalibration:
    """Ranges of a float h_s (run in float64) on ẑ: per z channel, and per channel after every ReLU."""
    h_s = copy.deepcopy(float_h_s).double().eval()
    outputs = []
    x = z_hat.double()
    for module in h_s:
        x = module(x)
        if isinstance(module, nn.ReLU):
            outputs.append(x.amax(dim=(0, 2, 3)).numpy())
    return HsCalibration(z_hat.amin(dim=(0, 2, 3)).numpy(), z_hat.amax(dim=(0, 2, 3)).numpy(), outputs)


def exact_hyper_synthesis(model: JointCompressionClassifier, tables: CodecTables, hs_format: str = "int8",
                          images: np.ndarray | None = None) -> Int8HyperSynthesis | IntegerHyperSynthesis:
    """The package's h_s: ``int8`` quantised from the float h_s and ranges on the z of ``images`` (else of the
    z prior); ``fixed``, the format-1 fixed-point h_s (no calibration)."""
    layers = hyper_synthesis_layers(model)
    if hs_format == "fixed":
        return IntegerHyperSynthesis.from_float_layers(layers, tables.scale_table, weight_bits=HS_WEIGHT_BITS)
    if hs_format != "int8":
        raise ValueError(f"unknown h_s format {hs_format!r}: use one of {', '.join(HS_FORMATS)}")
    z_hat = prior_z_hat(tables) if images is None or len(images) == 0 else image_z_hat(model, tables, images)
    return quantise(layers, tables.scale_table, tables.z_medians, hs_calibration(model.hyperprior.h_s, z_hat))
