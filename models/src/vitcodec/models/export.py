"""Export a trained network to a model package: the edge's ONNX encoder, the codec tables with the exact
integer h_s, the cloud's weights, and a manifest tying them together under one model id.

Like compressai's update-then-save habit: tables are computed once here, hashed into the model id, and never
recomputed at run time.
"""

from __future__ import annotations

import hashlib
import io
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from vitcodec.codec.latent_codec import LatentCodec
from vitcodec.codec.tables import CodecTables
from vitcodec.models.external_weights import bind_external_weights
from vitcodec.models.hs_export import exact_hyper_synthesis, hyper_synthesis_layers  # noqa: F401 (re-export)
from vitcodec.models.jcc import EdgeAnalysis, JointCompressionClassifier
from vitcodec.models.latent_networks import LatentNetworks
from vitcodec.packages import PACKAGE_FORMAT, FileContent, ModelPackage

CLASSIFIER_FILE = "classifier.onnx"
CLOUD_MODULES = ("vit", "aggregation", "g_s")  # what the cloud needs: no g_a, no float h_s


def codec_tables(model: JointCompressionClassifier) -> CodecTables:
    """compressai's integer CDF buffers after ``update()``, as plain arrays."""
    model.update(force=True)
    eb, gc = model.hyperprior.entropy_bottleneck, model.hyperprior.gaussian_conditional

    def arr(t: torch.Tensor, dtype: Any) -> np.ndarray:
        return t.detach().cpu().numpy().astype(dtype)

    return CodecTables(
        z_cdf=arr(eb._quantized_cdf, np.int32), z_cdf_length=arr(eb._cdf_length, np.int32),
        z_offset=arr(eb._offset, np.int32), z_medians=arr(eb.quantiles[:, 0, 1], np.float32),
        y_cdf=arr(gc._quantized_cdf, np.int32), y_cdf_length=arr(gc._cdf_length, np.int32),
        y_offset=arr(gc._offset, np.int32), scale_table=arr(gc.scale_table, np.float64),
    )


def build_latent_codec(model: JointCompressionClassifier, hs_format: str = "int8",
                       calibration_images: np.ndarray | None = None) -> LatentCodec:
    """The tables and the exact h_s (`vitcodec.models.hs_export`: ``int8`` calibrated on the z of
    ``calibration_images``, or the older ``fixed``)."""
    tables = codec_tables(model)
    return LatentCodec(tables, exact_hyper_synthesis(model, tables, hs_format, calibration_images))


def onnx_encoder_bytes(model: JointCompressionClassifier, opset: int = 17) -> bytes:
    """g_a + h_a in ONNX with dynamic batch and spatial axes (inputs arrive already padded to the stride)."""
    encoder = EdgeAnalysis(model).eval().cpu()
    c = model.config
    h, w = (-(-s // c.stride) * c.stride for s in c.img_size)
    dummy = torch.zeros(1, c.in_chans, h, w)
    buffer = io.BytesIO()
    # torch types `f` as a path; its legacy (dynamo=False) exporter writes to any file-like object as well
    torch.onnx.export(
        encoder, (dummy,), buffer,  # pyright: ignore[reportArgumentType]
        input_names=["image"], output_names=["y", "z"], opset_version=opset,
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "y": {0: "batch", 2: "h", 3: "w"},
                      "z": {0: "batch", 2: "hz", 3: "wz"}},
        dynamo=False,
    )
    return buffer.getvalue()


class _Classifier(nn.Module):
    """y_hat -> class probabilities, softmax included (and the novelty score when the network is
    calibrated): what the cloud's ``onnxruntime`` backend runs."""

    def __init__(self, net: LatentNetworks) -> None:
        super().__init__()
        self.net = net

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits, novelty = self.net.analyse(y_hat)
        probs = torch.softmax(logits.float(), dim=1)
        return probs if novelty is None else (probs, novelty)


def onnx_classifier_bytes(model: LatentNetworks, opset: int = 17) -> bytes:
    """The ViT classifier in ONNX, dynamic in the batch, at the training latent grid: output ``probs``, and
    ``novelty`` when the network is calibrated."""
    c = model.config
    dummy = torch.zeros(2, c.M, *c.latent_shape(*c.img_size))
    outputs = ["probs", "novelty"] if c.calibrated else ["probs"]
    buffer = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad():
        # torch types `f` as a path; its legacy (dynamo=False) exporter writes to any file-like object as well
        torch.onnx.export(_Classifier(model).eval().cpu(), (dummy,), buffer,  # pyright: ignore[reportArgumentType]
                          input_names=["y_hat"], output_names=outputs,
                          dynamic_axes={"y_hat": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                          opset_version=opset, dynamo=False)
    return buffer.getvalue()


def classifier_graph(model: LatentNetworks, weights: Path) -> bytes:
    """``onnx_classifier_bytes`` whose weight tensors are external data in ``weights`` (the package's
    ``weights.pt``, from which ``model`` was loaded; the graph sits beside it): the package holds its classifier
    weights once (the graph is ~50 kB), ONNX Runtime computes with exactly the tensors the torch backend loads,
    and ``onnx.load`` or ``onnxruntime.InferenceSession`` open the file with no help
    (`vitcodec.models.external_weights`)."""
    import onnx
    import onnx.external_data_helper

    graph = onnx.load_from_string(onnx_classifier_bytes(model))
    stored = {k: v.numpy() for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()
              if k.startswith(("vit.", "calibration."))}  # the calibration statistics too: stored once
    bind_external_weights(graph, stored, weights)
    resolved = onnx.ModelProto.FromString(graph.SerializeToString())
    onnx.external_data_helper.load_external_data_for_model(resolved, str(weights.parent))
    onnx.checker.check_model(resolved)  # every reference reads whole tensors of the right size
    return graph.SerializeToString()


def add_classifier(package: ModelPackage) -> ModelPackage:
    """Write ``classifier.onnx`` (see `classifier_graph`) into a compressed package, from the cloud weights as
    stored; run again whenever ``weights.pt`` is rewritten, since the graph points into it. The model id (codec
    tables and encoder) does not change."""
    from vitcodec.models.latent_networks import load_latent_networks

    graph = classifier_graph(load_latent_networks(package), package.file("weights"))
    return package.rewrite(files={"classifier": (CLASSIFIER_FILE, graph)})


def store_weights_as_float16(onnx_bytes: bytes, min_elements: int = 64) -> bytes:
    """Store the encoder's float32 weight tensors as float16, each followed by a Cast back to float32.

    Why: the edge downloads this file, and float16 storage halves it. The arithmetic stays float32 (ONNX
    Runtime folds the Casts into constants when the session is created), so only the stored weights are
    rounded (relative error below 2^-11). Small tensors and values outside float16's range stay float32.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    graph_inputs = {i.name for i in graph.input}
    kept, casts = [], []
    for init in graph.initializer:
        weights = numpy_helper.to_array(init)
        if (init.data_type != TensorProto.FLOAT or weights.size < min_elements or init.name in graph_inputs
                or not np.all(np.abs(weights) < np.finfo(np.float16).max)):
            kept.append(init)
            continue
        stored = f"{init.name}__float16"
        kept.append(numpy_helper.from_array(weights.astype(np.float16), stored))
        casts.append(helper.make_node("Cast", [stored], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}__to_float32"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # casts first: the graph stays topologically sorted
    onnx.checker.check_model(model)
    return model.SerializeToString()


def cloud_state(model: JointCompressionClassifier, modules: tuple[str, ...], half: bool) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in model.state_dict().items():
        if key.split(".", 1)[0] in modules:
            value = value.detach().cpu()
            state[key] = value.half() if half and value.is_floating_point() else value.clone()
    return state


def export_package(model: JointCompressionClassifier, out: Path, *, name: str, version: int = 1,
                   quality: int | None = None, compress: bool = True, half_weights: bool = True,
                   labels: tuple[str, ...] | None = None, extra: dict[str, Any] | None = None,
                   overwrite: bool = True, hs_format: str = "int8",
                   calibration_images: np.ndarray | None = None) -> ModelPackage:
    """Write ``out/<name>/<version>/`` and return the opened package.

    ``hs_format``: ``int8`` (h_s format 2, the default: the 8-bit h_s, calibrated on the z of
    ``calibration_images``, uint8 training images, or of the z prior without them) or ``fixed`` (format 1).

    ``compress=False`` exports the step-one reference model: full torch weights, no ONNX, no codec.
    ``half_weights`` stores the cloud weights and the edge encoder's weights in float16 (both compute in
    float32 after loading; halves the zoo's size).
    """
    model = model.eval().cpu()
    c = model.config
    contents: dict[str, FileContent] = {}
    files: dict[str, str] = {}
    model_id = b""
    if compress:
        codec = build_latent_codec(model, hs_format, calibration_images)
        onnx_bytes = onnx_encoder_bytes(model)
        if half_weights:
            onnx_bytes = store_weights_as_float16(onnx_bytes)
        model_id = codec.model_id(hashlib.sha256(onnx_bytes).digest())
        files.update(codec="codec.npz", encoder="encoder.onnx")
        contents.update(codec=codec.save, encoder=onnx_bytes)
        modules = CLOUD_MODULES
    else:
        modules = ("g_a", *CLOUD_MODULES)
    state = cloud_state(model, modules, half_weights)
    files["weights"] = "weights.pt"
    contents["weights"] = partial(torch.save, state)
    manifest = {
        "format": PACKAGE_FORMAT,
        "name": name,
        "version": version,
        "preset": c.name,
        "config": c.to_dict(),
        "labels": list(labels or c.labels),
        "input": {"size": list(c.img_size), "channels": c.in_chans, "mean": list(c.mean), "std": list(c.std),
                  "stride": c.stride, "resize": "centre zero-pad when smaller, else bilinear resize",
                  "normalise": "(pixel / 255 - mean) / std, then zero-pad bottom/right to the stride"},
        "compress": compress,
        "quality": quality,
        "model_id": model_id.hex(),
        "weights_storage": "float16" if half_weights else "float32",
        "files": files,
        **(extra or {}),
    }
    package = ModelPackage.write(Path(out) / name / str(version), manifest, contents, overwrite=overwrite)
    return add_classifier(package) if compress else package
