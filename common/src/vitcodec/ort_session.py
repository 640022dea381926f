"""ONNX Runtime sessions, configured once for every runtime that uses one: the edge encoder (``encoder.onnx``)
and the cloud's ``onnxruntime`` backend (``classifier.onnx``). torch-free.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def session_options(threads: int | None = None, spinning: bool = False) -> ort.SessionOptions:
    """Full graph optimisation, sequential execution, no spinning threads (small devices and shared servers
    both lose more to busy-waiting than they gain; the exact h_s GEMMs run one small session per layer back to
    back, and spinning pools starved each other there, 13x slower); ``threads`` caps the intra-op pool when
    given; ``spinning`` turns busy-waiting back on for whoever measured it helps."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def providers_for(device: str = "cpu") -> list:
    """CUDA for ``cuda`` / ``cuda:N`` when this onnxruntime build has it, always with the CPU as fallback."""
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = str(device).partition(":")[2] or "0"
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def create_session(model: str | Path | bytes, threads: int | None = None, device: str = "cpu",
                   providers: list | None = None,
                   initializers: dict[str, ort.OrtValue] | None = None) -> ort.InferenceSession:
    """An inference session for an ONNX file (or its bytes) with this project's options; ``initializers``
    supplies tensors the file declares as external data (the caller keeps them alive with the session)."""
    options = session_options(threads)
    if initializers:
        options.add_external_initializers(list(initializers), list(initializers.values()))
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=providers or providers_for(device))
