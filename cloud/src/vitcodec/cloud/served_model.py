"""`ServedModel`: what the server asks of a loaded model, whichever runtime runs it.

The batch queues (`batching.py`), the isolated batch decoding (`decoding.py`) and the archive's re-classification
(`reclassify.py`) only ever call these methods; the backends of `backends.py` (torch, ONNX Runtime) implement
them. Every array is numpy, so nothing here imports torch.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

Payload = tuple[bytes, bytes]  # (z payload, y payload) of one parsed stream


@runtime_checkable
class ServedModel(Protocol):
    """A model package loaded for serving: entropy decoding, classification on ŷ, reconstruction on demand."""

    @property
    def labels(self) -> list[str]:
        """Class names, in the order of the probabilities' columns."""
        ...

    def decode_payloads(self, payloads: list[Payload], latent_shape: tuple[int, int]) -> np.ndarray:
        """ŷ (B, M, h, w) float32 of streams already parsed and checked, one h_s pass for the batch. The first
        bad payload raises (a `CodecError`, or whatever the range decoder raised), without saying which."""
        ...

    def classify_latents(self, y_hat: np.ndarray) -> np.ndarray:
        """Class probabilities (B, C) of a batch of ŷ; no pixel decoder runs."""
        ...

    def analyse_latents(self, y_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities (B, C), novelty (B,) or None when the package is not calibrated): one forward."""
        ...

    def reconstruct_latents(self, y_hat: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """uint8 images (B, H, W, C) of `image_size` from a batch of ŷ."""
        ...
