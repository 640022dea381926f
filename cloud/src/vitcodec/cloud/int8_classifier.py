"""The package's ``classifier.onnx`` with its MatMul and Gemm weights in int8, built in memory at model load for
``--backend onnxruntime-int8``.

Why ONNX Runtime's dynamic quantisation: weights are quantised once (per tensor, symmetric int8), activations
per batch at run time, so no calibration data and no new package file are needed, and every package the
server can open (older ones whose weights the server binds included) gets the cheaper pass. ONNX Runtime's
pre-processing (shape inference, its graph optimisations) runs first and folds the graph's float16 -> float32
weight casts, so the quantiser sees the weights as initializers. Measured on the zoo
(benchmarks/bench_classifier.py, docs/benchmarks.md): about 2x torch float32 at batch 32 on one thread, top-1
within 0.1 point on the 10k test split.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

QUANTISED_OPS = ["MatMul", "Gemm"]  # the ViT's linear layers: where nearly all of its time goes


def self_contained(path: Path, bound: dict[str, ort.OrtValue]) -> onnx.ModelProto:
    """The classifier graph with every weight inside it: external data read from the package, and the
    tensors the server binds (`bound`, older packages) written in."""
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        if tensor.name in bound:
            tensor.CopyFrom(numpy_helper.from_array(np.asarray(bound[tensor.name].numpy()), tensor.name))
    return model


def int8_classifier_bytes(path: Path, bound: dict[str, ort.OrtValue]) -> bytes:
    """The int8 classifier's ONNX bytes (casts folded, MatMul/Gemm weights int8, dynamic activations)."""
    with tempfile.TemporaryDirectory(prefix="vitcodec-int8-") as tmp:
        inlined, folded, quantised = (Path(tmp) / name for name in ("inlined.onnx", "folded.onnx", "int8.onnx"))
        onnx.save(self_contained(path, bound), str(inlined))
        quant_pre_process(str(inlined), str(folded))  # shape inference, casts folded: what the quantiser expects
        quantize_dynamic(str(folded), str(quantised), weight_type=QuantType.QInt8,
                         op_types_to_quantize=QUANTISED_OPS)
        return quantised.read_bytes()
