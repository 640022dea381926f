"""Inference backends for the classification forward.

- ``torch`` (default): `vitcodec.models.inference.CloudModel` as it is.
- ``onnxruntime``: the same model, but the batched classifier (latents -> probabilities, softmax included)
  runs in ONNX Runtime from the package's ``classifier.onnx`` (written by ``vitcodec export``;
  ``CUDAExecutionProvider`` on GPU when onnxruntime-gpu is installed). Entropy decoding and reconstruction stay
  as they are. Measured on this project's CPU machine (fmnist preset, 1 thread): 15-35 % faster than torch at
  batch 1-64, probabilities equal to 1e-7; see benchmarks/bench_server.py ``--backend`` to measure on yours.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from vitcodec.ort_session import create_session
from vitcodec.packages import ModelPackage

log = logging.getLogger("vitcodec.cloud.backends")

BACKENDS = ("torch", "onnxruntime")


class OrtClassifierModel:
    """A CloudModel whose `classify_latents` runs the package's ``classifier.onnx`` in ONNX Runtime; everything
    else is delegated. The file is written by ``vitcodec export``: the server exports nothing itself."""

    def __init__(self, model: Any, device: str = "cpu", threads: int = 0) -> None:
        self._model = model
        path = model.package.file("classifier")
        self._weights = _classifier_weights(path, model.net.state_dict())  # ORT reads them while it runs
        self._session = create_session(path, threads or None, device, initializers=self._weights)
        self._outputs = [o.name for o in self._session.get_outputs()]  # probs, and novelty when calibrated
        log.info("%s: classifier on ONNX Runtime (%s)", model.name, self._session.get_providers()[0])

    def classify_latents(self, y_hat: np.ndarray) -> np.ndarray:
        return self.analyse_latents(y_hat)[0]

    def analyse_latents(self, y_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        results = self._session.run(self._outputs, {"y_hat": np.ascontiguousarray(y_hat, dtype=np.float32)})
        return results[0], results[1] if len(results) > 1 else None

    def __getattr__(self, name: str) -> Any:  # decode, reconstruct_latents, labels, config, ...
        return getattr(self._model, name)


def _classifier_weights(path: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The external initializers ``classifier.onnx`` names (``vitcodec export`` wrote the map), taken from the
    loaded cloud weights: float32, transposed where the exporter folded a transpose into the weight."""
    import onnx
    import onnxruntime as ort

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    weight_map = json.loads(meta.get("vitcodec.weight_map", "{}"))
    values = {}
    for name, (key, transposed) in weight_map.items():
        tensor = state[key].detach().float().cpu()
        values[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray((tensor.T if transposed else tensor).numpy()))
    return values


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
