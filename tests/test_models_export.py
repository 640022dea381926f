"""Exported edge encoders store float16 weights but compute in float32, and match the float32 export."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from vitcodec.models.export import onnx_encoder_bytes, store_weights_as_float16  # noqa: E402
from vitcodec.models.registry import create_model  # noqa: E402


@pytest.fixture(scope="module")
def encoders() -> tuple[bytes, bytes]:
    import torch

    torch.manual_seed(0)
    full = onnx_encoder_bytes(create_model("jcc-fmnist-28-s8").eval())
    return full, store_weights_as_float16(full)


def _run(model_bytes: bytes, image: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"]).run(None, {"image": image})


def test_float16_storage_halves_the_file_and_keeps_float32_io(encoders) -> None:
    full, half = encoders
    assert len(half) < 0.55 * len(full)
    graph = onnx.load_from_string(half).graph
    stored = {i.data_type for i in graph.initializer if np.prod(i.dims) >= 64}
    assert stored == {onnx.TensorProto.FLOAT16}
    assert sum(node.op_type == "Cast" for node in graph.node) >= 6  # every conv weight of g_a and h_a
    for value in (*graph.input, *graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_float16_storage_changes_latents_only_by_weight_rounding(encoders) -> None:
    full, half = encoders
    image = np.random.default_rng(1).normal(size=(4, 1, 32, 32)).astype(np.float32)
    for reference, rounded in zip(_run(full, image), _run(half, image)):
        assert reference.shape == rounded.shape and rounded.dtype == np.float32
        scale = float(np.abs(reference).max())
        assert scale > 0
        # float16 rounds each weight by at most 2^-11 relative; a few layers deep that stays well under 1 %
        assert float(np.abs(reference - rounded).max()) <= 0.01 * scale
        assert not np.array_equal(reference, rounded)  # the weights really were rounded


def test_packages_carry_the_classifier_graph_the_onnxruntime_backend_loads(tmp_path) -> None:
    """`export_package` writes classifier.onnx (a weightless graph; the weights come from weights.pt); the
    server's onnxruntime backend loads it without exporting anything and matches the torch backend."""
    import torch

    from vitcodec.cloud.backends import make_loader
    from vitcodec.models.export import export_package
    from vitcodec.models.inference import CloudModel
    from vitcodec.packages import ModelNotFoundError

    torch.manual_seed(1)
    package = export_package(create_model("jcc-fmnist-28-s8"), tmp_path, name="tiny")
    graph = package.file("classifier")
    assert graph.stat().st_size < 100_000  # the ~0.8 M ViT weights are not duplicated in it
    model_id = package.model_id
    served = make_loader("onnxruntime", "cpu")(package)
    torch_model = CloudModel(package)
    y_hat = np.random.default_rng(0).normal(0, 2, (3, 128, 4, 4)).astype(np.float32)
    assert np.allclose(served.classify_latents(y_hat), torch_model.classify_latents(y_hat), atol=1e-6)
    assert package.model_id == model_id and model_id  # the id covers codec + encoder, not the classifier
    graph.unlink()
    with pytest.raises(ModelNotFoundError, match="classifier"):
        make_loader("onnxruntime", "cpu")(package)
