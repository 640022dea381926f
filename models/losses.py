"""Losses of the two training steps.

Step one: cross-entropy (+ a small reconstruction term, as in the paper's code).
Step two: the rate–distortion–accuracy loss ``alpha * CE + beta * MSE(0..255 pixels) + bpp``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The paper's qualities: (alpha, beta).
QUALITIES: dict[int, tuple[float, float]] = {1: (0.1, 0.001), 2: (0.3, 0.003), 3: (0.6, 0.006)}


def quality_weights(quality: int) -> tuple[float, float]:
    try:
        return QUALITIES[quality]
    except KeyError:
        raise ValueError(f"quality must be one of {sorted(QUALITIES)}, got {quality}") from None


def bits_per_pixel(likelihoods: list[Tensor], num_pixels: int) -> Tensor:
    """Estimated rate: -log2 of the likelihoods, per image pixel (of the original, unpadded image)."""
    batch = likelihoods[0].shape[0]
    total = sum(torch.log(lik).sum() for lik in likelihoods)
    return total / (-math.log(2) * num_pixels * batch)


def pixel_mse_255(x_hat: Tensor, x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """MSE on the 0..255 scale, computed from normalised tensors."""
    return F.mse_loss((x_hat * std + mean) * 255.0, (x * std + mean) * 255.0)


@dataclass
class LossWeights:
    alpha: float = 1.0  # cross-entropy
    beta: float = 0.0005  # MSE on 0..255 pixels
    rate: float = 1.0  # bpp (only when compressing)
    label_smoothing: float = 0.0


class JointLoss(nn.Module):
    """alpha * CE + beta * MSE(255) + rate * bpp; terms that are absent from the output are skipped."""

    def __init__(self, weights: LossWeights, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.weights = weights
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, out: dict[str, Tensor], x: Tensor, target: Tensor) -> dict[str, Tensor]:
        w = self.weights
        terms: dict[str, Tensor] = {}
        terms["ce"] = F.cross_entropy(out["logits"].float(), target, label_smoothing=w.label_smoothing)
        loss = w.alpha * terms["ce"]
        if "x_hat" in out:
            terms["mse"] = pixel_mse_255(out["x_hat"].float(), x, self.mean, self.std)
            loss = loss + w.beta * terms["mse"]
        if "likelihoods_y" in out:
            num_pixels = x.shape[-2] * x.shape[-1]
            terms["bpp"] = bits_per_pixel([out["likelihoods_y"], out["likelihoods_z"]], num_pixels)
            loss = loss + w.rate * terms["bpp"]
        terms["loss"] = loss
        return terms
