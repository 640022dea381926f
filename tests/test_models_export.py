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
