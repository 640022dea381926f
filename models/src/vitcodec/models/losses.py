"""Losses of the two training steps.

Step one: cross-entropy (+ a small reconstruction term, as in the paper's code).
Step two: the rate–distortion–accuracy loss ``alpha * CE + beta * MSE(0..255 pixels) + bpp``.
Either step may distil from a pixel-space teacher: the CE term then mixes the labels with the teacher's
predictions (`distillation_loss`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

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
    total = cast(Tensor, sum(torch.log(lik).sum() for lik in likelihoods))  # a sum of tensors (never empty)
    return total / (-math.log(2) * num_pixels * batch)


def pixel_mse_255(x_hat: Tensor, x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """MSE on the 0..255 scale, computed from normalised tensors."""
    return F.mse_loss((x_hat * std + mean) * 255.0, (x * std + mean) * 255.0)


DISTILL_MODES = ("soft", "hard")


def distillation_loss(student: Tensor, teacher: Tensor, target: Tensor, mode: str, weight: float,
                      tau: float = 1.0, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """``(1 - weight) * CE(student, labels) + weight * D``; returns (the mix, D).

    soft: D = tau² · KL(softmax(teacher / tau) ‖ softmax(student / tau)) (Hinton et al.; tau² keeps the
    gradient's scale independent of tau). hard: D = CE(student, argmax teacher), DeiT's hard-label
    distillation, which their ablation found better than soft for a CNN teacher. Label smoothing applies to
    the label term only; the teacher gets no gradient.
    """
    if mode not in DISTILL_MODES:
        raise ValueError(f"distillation mode must be one of {DISTILL_MODES}, got {mode!r}")
    student, teacher = student.float(), teacher.detach().float()
    ce = F.cross_entropy(student, target, label_smoothing=label_smoothing)
    if mode == "soft":
        kd = F.kl_div(F.log_softmax(student / tau, 1), F.log_softmax(teacher / tau, 1), reduction="batchmean",
                      log_target=True) * tau**2
    else:
        kd = F.cross_entropy(student, teacher.argmax(1))
    return (1.0 - weight) * ce + weight * kd, kd


@dataclass
class LossWeights:
    alpha: float = 1.0  # cross-entropy
    beta: float = 0.0005  # MSE on 0..255 pixels
    rate: float = 1.0  # bpp (only when compressing)
    label_smoothing: float = 0.0
    distill: str | None = None  # "soft" | "hard": mix a teacher's predictions into the CE term
    distill_alpha: float = 0.5  # the teacher's share of that term
    distill_tau: float = 1.0  # soft distillation's temperature


class JointLoss(nn.Module):
    """alpha * CE + beta * MSE(255) + rate * bpp; terms that are absent from the output are skipped.
    With a teacher, CE is `distillation_loss`'s mix of labels and teacher."""

    mean: Tensor  # buffers (registered in __init__), declared for the type checkers
    std: Tensor

    def __init__(self, weights: LossWeights, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.weights = weights
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, out: dict[str, Tensor], x: Tensor, target: Tensor,
                teacher_logits: Tensor | None = None) -> dict[str, Tensor]:
        """Terms by name; with ``distill`` set and ``teacher_logits`` given, ``ce`` stays the label CE (for
        the log), ``kd`` is the distillation term and alpha weighs their mix."""
        w = self.weights
        terms: dict[str, Tensor] = {}
        terms["ce"] = F.cross_entropy(out["logits"].float(), target, label_smoothing=w.label_smoothing)
        if w.distill is not None and teacher_logits is not None:
            accuracy_term, terms["kd"] = distillation_loss(out["logits"], teacher_logits, target, w.distill,
                                                           w.distill_alpha, w.distill_tau, w.label_smoothing)
        else:
            accuracy_term = terms["ce"]
        loss = w.alpha * accuracy_term
        if "x_hat" in out:
            terms["mse"] = pixel_mse_255(out["x_hat"].float(), x, self.mean, self.std)
            loss = loss + w.beta * terms["mse"]
        if "likelihoods_y" in out:
            num_pixels = x.shape[-2] * x.shape[-1]
            terms["bpp"] = bits_per_pixel([out["likelihoods_y"], out["likelihoods_z"]], num_pixels)
            loss = loss + w.rate * terms["bpp"]
        terms["loss"] = loss
        return terms
