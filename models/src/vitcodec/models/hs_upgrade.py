"""A package's exact h_s rewritten in the 8-bit format (h_s format 2) from the package's own files.

For packages whose training checkpoint is gone (the zoo's were trained in earlier sessions): the format-1
fixed-point weights hold the float h_s to 2**-weight_bits, so they are read back as floats, calibrated on the
ẑ that the package's own edge encoder gives on training images, and quantised exactly as `vitcodec export`
quantises a fresh checkpoint (`vitcodec.models.hs_export`). The encoder and the cloud weights are copied
unchanged; the model id changes because it covers the h_s, so streams of the old package are refused by the new
one rather than misread.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from vitcodec.codec.integer_hyper_synthesis import IntegerHyperSynthesis
from vitcodec.codec.latent_codec import LatentCodec
from vitcodec.codec.tables import CodecTables
from vitcodec.models.hs_export import encoded_z_hat, hs_calibration
from vitcodec.packages import FileContent, ModelPackage

UPGRADABLE_FORMAT = 1  # the wide fixed-point h_s (`vitcodec.codec.integer_hyper_synthesis`)
TARGET_FORMAT = 2  # the 8-bit h_s (`vitcodec.codec.int8_hyper_synthesis`)


def fixed_point_float_layers(hyper: IntegerHyperSynthesis) -> list[dict[str, Any]]:
    """The format-1 h_s as float layer dicts (the quantisers' input): weights / 2**weight_bits, biases /
    2**(weight_bits + act_bits)."""
    layers: list[dict[str, Any]] = []
    for layer in hyper.layers:
        if layer.kind == "relu":
            layers.append({"kind": "relu"})
            continue
        assert layer.weight is not None and layer.bias is not None  # every checked GEMM layer has both
        layers.append({
            "kind": layer.kind,
            "weight": layer.weight.astype(np.float64) / 2.0**hyper.weight_bits,
            "bias": layer.bias.astype(np.float64) / 2.0 ** (hyper.weight_bits + hyper.act_bits),
            "stride": layer.stride, "padding": layer.padding, "output_padding": layer.output_padding,
        })
    return layers


def float_hyper_synthesis(layers: list[dict[str, Any]]) -> nn.Sequential:
    """Float64 torch modules of layer dicts, so calibration runs the same code as for a trained h_s."""
    modules: list[nn.Module] = []
    for spec in layers:
        if spec["kind"] == "relu":
            modules.append(nn.ReLU())
            continue
        weight = torch.from_numpy(np.asarray(spec["weight"], dtype=np.float64))
        kernel = (int(weight.shape[2]), int(weight.shape[3]))
        if spec["kind"] == "conv":
            module: nn.Conv2d | nn.ConvTranspose2d = nn.Conv2d(
                weight.shape[1], weight.shape[0], kernel, stride=spec["stride"], padding=spec["padding"])
        else:
            module = nn.ConvTranspose2d(weight.shape[0], weight.shape[1], kernel, stride=spec["stride"],
                                        padding=spec["padding"], output_padding=spec["output_padding"])
        module = module.double()
        with torch.no_grad():
            module.weight.copy_(weight)
            assert module.bias is not None
            module.bias.copy_(torch.from_numpy(np.asarray(spec["bias"], dtype=np.float64)))
        modules.append(module)
    return nn.Sequential(*modules).eval()


def encoder_z_hat(package: ModelPackage, tables: CodecTables, images: np.ndarray) -> torch.Tensor:
    """ẑ (float64) of uint8 images through the package's ONNX encoder, fitted and rounded as the edge does."""
    from vitcodec.ort_session import create_session

    session = create_session(package.file("encoder"))
    return encoded_z_hat(lambda x: np.asarray(session.run(["z"], {"image": x})[0]), package.input_spec, tables,
                         images)


def upgrade_hyper_synthesis(package: ModelPackage, out: Path, images: np.ndarray, *,
                            overwrite: bool = False) -> ModelPackage:
    """Write ``out/<name>/<version>/``: ``package`` with its h_s in format 2, calibrated on the z of ``images``
    (uint8 training images), and return it opened. The manifest's test ``metrics`` are dropped (they belong to
    the old codec: run `vitcodec eval --record` again); an ``hs_upgrade`` record names the old model id."""
    from vitcodec.codec.int8_quantise import quantise

    if not package.compresses:
        raise ValueError(f"{package.name} is the uncompressed reference: it has no h_s")
    if len(images) == 0:
        raise ValueError("calibrating the 8-bit h_s needs at least one training image")
    old = LatentCodec.load(package.file("codec"))
    if not isinstance(old.hyper, IntegerHyperSynthesis):
        raise ValueError(f"{package.name} already has h_s format {TARGET_FORMAT}: nothing to upgrade")
    layers = fixed_point_float_layers(old.hyper)
    z_hat = encoder_z_hat(package, old.tables, images)
    hyper = quantise(layers, old.tables.scale_table, old.tables.z_medians,
                     hs_calibration(float_hyper_synthesis(layers), z_hat))
    codec = LatentCodec(old.tables, hyper)
    encoder_bytes = package.file("encoder").read_bytes()
    model_id = codec.model_id(hashlib.sha256(encoder_bytes).digest())
    manifest = {key: value for key, value in package.manifest.items() if key != "metrics"}
    manifest["model_id"] = model_id.hex()
    manifest["hs_upgrade"] = {"from_format": UPGRADABLE_FORMAT, "to_format": TARGET_FORMAT,
                              "from_model_id": package.model_id.hex(), "calibration_images": int(len(images))}
    contents: dict[str, FileContent] = {key: codec.save if key == "codec" else package.file(key).read_bytes()
                                        for key in manifest["files"]}
    return ModelPackage.write(Path(out) / package.name / str(package.version), manifest, contents,
                              overwrite=overwrite)
