"""The server's two backends, peers implementing `ServedModel`, and the one loader that picks one.

- ``torch`` (default, `TorchBackend`): the package's networks in torch (`vitcodec.models.inference.CloudModel`).
- ``onnxruntime`` (`OnnxRuntimeBackend`): the batched classifier (ŷ -> probabilities, softmax and novelty
  included) runs in ONNX Runtime from the package's ``classifier.onnx`` (written by ``vitcodec export``;
  ``CUDAExecutionProvider`` on GPU when onnxruntime-gpu is installed). Measured on this project's CPU machine
  (fmnist preset, 1 thread): 15-35 % faster than torch at batch 1-64, probabilities equal to 1e-7; see
  benchmarks/bench_server.py ``--backend`` to measure on yours.
- ``onnxruntime-int8`` (`OnnxRuntimeBackend` with ``int8=True``): the same graph with its linear layers in
  int8 (`vitcodec.cloud.int8_classifier`, quantised at load): about 2x torch at batch 32 on one thread, top-1
  within 0.1 point of float32 on the zoo (benchmarks/bench_classifier.py); probabilities differ by ~1e-3.

Both decode entropy-coded payloads with the package's codec (numpy, exact integer h_s) and reconstruct pixels
with the torch networks (`_PackageBackend`); they differ only in what runs the classifier.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from vitcodec.ort_session import create_session
from vitcodec.packages import ModelPackage

from .served_model import Payload, ServedModel

if TYPE_CHECKING:
    from vitcodec.models.inference import CloudModel

log = logging.getLogger("vitcodec.cloud.backends")

BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")

Loader = Callable[[ModelPackage], ServedModel]  # package -> a loaded model, for `ModelRepository(loader=...)`


class _PackageBackend:
    """What both backends share: a loaded `CloudModel` for the labels, entropy decoding and reconstruction."""

    def __init__(self, model: CloudModel) -> None:
        self.cloud_model = model

    @property
    def labels(self) -> list[str]:
        return self.cloud_model.labels

    def decode_payloads(self, payloads: list[Payload], latent_shape: tuple[int, int]) -> np.ndarray:
        return self.cloud_model.decode_payloads(payloads, latent_shape)

    def classify_latents(self, y_hat: np.ndarray) -> np.ndarray:
        return self.analyse_latents(y_hat)[0]

    def analyse_latents(self, y_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def reconstruct_latents(self, y_hat: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        return self.cloud_model.reconstruct_latents(y_hat, image_size)


class TorchBackend(_PackageBackend):
    """The classifier in torch, on the server's device."""

    def analyse_latents(self, y_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self.cloud_model.analyse_latents(y_hat)


class OnnxRuntimeBackend(_PackageBackend):
    """The classifier in ONNX Runtime from the package's ``classifier.onnx``, its weights bound from the loaded
    cloud weights. The file is written by ``vitcodec export``: the server exports nothing itself."""

    def __init__(self, model: CloudModel, device: str = "cpu", threads: int = 0, int8: bool = False) -> None:
        super().__init__(model)
        path = model.package.file("classifier")
        self._weights = _classifier_weights(path, model.net.state_dict())  # ORT reads them while it runs
        if int8:
            from .int8_classifier import int8_classifier_bytes

            self._session = create_session(int8_classifier_bytes(path, self._weights), threads or None, device)
        else:
            self._session = create_session(path, threads or None, device, initializers=self._weights)
        self._outputs = [o.name for o in self._session.get_outputs()]  # probs, and novelty when calibrated
        log.info("%s: classifier on ONNX Runtime%s (%s)", model.name, ", int8 linear layers" if int8 else "",
                 self._session.get_providers()[0])

    def analyse_latents(self, y_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        # the classifier's outputs are dense tensors (ORT's annotation also allows sparse tensors, lists, maps)
        results = cast("Sequence[np.ndarray]",
                       self._session.run(self._outputs, {"y_hat": np.ascontiguousarray(y_hat, dtype=np.float32)}))
        return results[0], results[1] if len(results) > 1 else None


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
        array = np.ascontiguousarray((tensor.T if transposed else tensor).numpy())
        values[name] = ort.OrtValue.ortvalue_from_numpy(array)
    return values


def make_loader(backend: str = "torch", device: str = "cpu", threads: int = 0) -> Loader:
    """package -> served model on `backend`, for `ModelRepository(loader=...)`; the server's one loader."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")

    def load(package: ModelPackage) -> ServedModel:
        from vitcodec.models.inference import CloudModel  # torch: imported only when a server loads models

        model = CloudModel(package, device)
        if backend in ("onnxruntime", "onnxruntime-int8"):
            return OnnxRuntimeBackend(model, device, threads, int8=backend == "onnxruntime-int8")
        return TorchBackend(model)

    return load
