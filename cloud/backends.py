"""Inference backends for the classification forward.

- ``torch`` (default): `vitcodec.models.inference.CloudModel` as it is.
- ``onnxruntime``: the same model, but the batched classifier (latents -> probabilities, softmax included)
  is exported to ONNX once at load time and run by ONNX Runtime (``CUDAExecutionProvider`` on GPU when
  onnxruntime-gpu is installed). Entropy decoding and reconstruction stay as they are. Measured on this
  project's CPU machine (fmnist preset, 1 thread): 15-35 % faster than torch at batch 1-64, probabilities equal
  to 1e-7; see benchmarks/bench_server.py ``--backend`` to measure on yours.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from vitcodec.packages import ModelPackage

log = logging.getLogger("vitcodec.cloud.backends")

BACKENDS = ("torch", "onnxruntime")


class OrtClassifierModel:
    """A CloudModel whose `classify_latents` runs in ONNX Runtime; everything else is delegated."""

    def __init__(self, model: Any, device: str = "cpu", threads: int = 0) -> None:
        import onnxruntime as ort
        import torch

        self._model = model
        net = model.net

        class _Classify(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
                return torch.softmax(self.net.classify(y_hat).float(), dim=1)

        config = model.config
        latent = config.latent_shape(*config.img_size)
        dummy = torch.zeros(2, config.M, *latent)
        buffer = io.BytesIO()
        wrapper = _Classify().eval().cpu()
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(wrapper, (dummy,), buffer, input_names=["y_hat"], output_names=["probs"],
                              dynamic_axes={"y_hat": {0: "batch"}, "probs": {0: "batch"}}, opset_version=17,
                              dynamo=False)
        net.to(model.device)  # export ran on CPU; reconstruction keeps the requested device
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            index = str(device).partition(":")[2] or "0"
            providers = [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
        self._session = ort.InferenceSession(buffer.getvalue(), options, providers=providers)
        log.info("%s: classifier on ONNX Runtime (%s)", model.name, self._session.get_providers()[0])

    def classify_latents(self, y_hat: np.ndarray) -> np.ndarray:
        return self._session.run(["probs"], {"y_hat": np.ascontiguousarray(y_hat, dtype=np.float32)})[0]

    def __getattr__(self, name: str) -> Any:  # decode, reconstruct_latents, labels, config, ...
        return getattr(self._model, name)


def make_loader(backend: str, device: str, threads: int = 0) -> Callable[[ModelPackage], Any]:
    """package -> served model, for `ModelRepository(loader=...)`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")

    def load(package: ModelPackage) -> Any:
        from vitcodec.models.inference import CloudModel  # torch: imported only when a server loads models

        model = CloudModel(package, device)
        if backend == "onnxruntime":
            return OrtClassifierModel(model, device, threads)
        return model

    return load
