"""What the system reports for a decoded stream, defined once: the top-k classes, bits per pixel, PSNR against
the original pixels, and a reconstruction as PNG.

numpy and Pillow only (no torch), so the edge CLI, the cloud server, ``vitcodec decode`` and ``vitcodec eval``
compute every figure the same way.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PSNR_IDENTICAL_DB = 100.0  # reported for identical images, where the PSNR is infinite


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Class indexes by falling probability, at most ``k`` (at least 1) per row; ties keep the lower index.

    Accepts one row (C,) or a batch (B, C) and returns the same rank: (k,) or (B, k).
    """
    k = max(1, min(k, probabilities.shape[-1]))
    return np.argsort(-probabilities, axis=-1, kind="stable")[..., :k]


def top_k_hits(probabilities: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """bool (B,): whether each label is among its row's top ``k`` classes."""
    return (top_k(probabilities, k) == labels[:, None]).any(axis=1)


def bits_per_pixel(num_bytes: int | float, image_size: tuple[int, int]) -> float:
    """Rate of a stream (every byte, header included) per pixel of the original image."""
    return 8.0 * num_bytes / (image_size[0] * image_size[1])


def psnr(reference: np.ndarray, decoded: np.ndarray, identical: float = PSNR_IDENTICAL_DB) -> np.ndarray:
    """Per-image PSNR in dB of uint8 batches (B, ...) on the 0..255 scale; identical images score
    ``identical`` (100 dB by default, so that a mean over a data set stays finite)."""
    diff = reference.astype(np.float64) - decoded.astype(np.float64)
    mse = (diff**2).reshape(len(reference), -1).mean(axis=1)
    return np.where(mse > 0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)), identical)


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 (H, W, C) -> PNG bytes (grey for one channel)."""
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
