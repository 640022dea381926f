"""Calibrated confidence and a novelty score, fitted after training on held-out data.

Two things a served answer needs besides the class:

- **Probabilities that mean what they say.** A network trained with cross-entropy is over- or under-confident;
  one temperature ``T`` dividing the logits, fitted by minimising the negative log-likelihood on the validation
  split (Guo et al., ICML 2017), fixes most of it without changing any top-1. Measured by the expected
  calibration error (`expected_calibration_error`, 15 equal-width bins).
- **"This is not like anything I know."** A softmax is confident far from the training data. The distance of
  an image's pooled transformer features to the nearest class mean, under a covariance shared by the classes
  (Mahalanobis; Lee et al., NeurIPS 2018), grows there instead. Means and covariance come from the training
  (fit) split's features; the threshold is a quantile of the validation split's distances, so the flag fires on
  a known share of in-distribution images. The served *novelty* is distance / threshold: above 1.0 means out
  of distribution, whatever the model.

The fitted numbers live in the network as buffers (`Calibration`), so ``weights.pt``, the torch backend and
``classifier.onnx`` all carry and apply them the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

ECE_BINS = 15


class Calibration(nn.Module):
    """The fitted temperature and novelty statistics of one network (buffers, filled by `fit_calibration`)."""

    temperature: Tensor  # buffers (registered in __init__), declared for the type checkers
    class_means: Tensor
    precision: Tensor
    threshold: Tensor

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("temperature", torch.ones(1))
        self.register_buffer("class_means", torch.zeros(num_classes, embed_dim))
        self.register_buffer("precision", torch.eye(embed_dim))
        self.register_buffer("threshold", torch.ones(1))

    def scale(self, logits: Tensor) -> Tensor:
        return logits / self.temperature

    def novelty(self, pooled: Tensor) -> Tensor:
        """Squared Mahalanobis distance to the nearest class mean, over the threshold: (B,)."""
        diff = pooled.float()[:, None, :] - self.class_means[None]
        distance = ((diff @ self.precision) * diff).sum(-1).min(dim=1).values
        return distance / self.threshold

    def load_fit(self, fit: CalibrationFit) -> None:
        self.temperature.fill_(fit.temperature)
        self.class_means.copy_(torch.as_tensor(fit.class_means, dtype=torch.float32))
        self.precision.copy_(torch.as_tensor(fit.precision, dtype=torch.float32))
        self.threshold.fill_(fit.threshold)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = logits / temperature
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1))
    return float(np.mean(log_z - shifted[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature minimising the NLL: a log-spaced grid, then golden-section refinement around its best
    (the NLL is convex in 1/T, so the grid's best bracket holds the minimum)."""
    logits = np.asarray(logits, dtype=np.float64)
    grid = np.geomspace(low, high, 200)
    nll = np.array([negative_log_likelihood(logits, labels, t) for t in grid])
    i = int(np.argmin(nll))
    a, b = np.log(grid[max(i - 1, 0)]), np.log(grid[min(i + 1, len(grid) - 1)])
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if negative_log_likelihood(logits, labels, np.exp(c)) < negative_log_likelihood(logits, labels, np.exp(d)):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ_bins (n_bin / n) · |accuracy − mean confidence| over equal-width bins of the top probability."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def class_gaussians(features: np.ndarray, labels: np.ndarray, num_classes: int,
                    ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Class means (C, D) and the precision (D, D) of the covariance shared by the classes (plus ``ridge``·I
    so that it inverts even with fewer images than dimensions)."""
    features = np.asarray(features, dtype=np.float64)
    missing = [c for c in range(num_classes) if not np.any(labels == c)]
    if missing:
        raise ValueError(f"no training images of class(es) {missing}: cannot fit their means")
    means = np.stack([features[labels == c].mean(axis=0) for c in range(num_classes)])
    centred = features - means[labels]
    covariance = centred.T @ centred / len(features) + ridge * np.eye(features.shape[1])
    return means, np.linalg.inv(covariance)


def mahalanobis_to_nearest(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    diff = np.asarray(features, dtype=np.float64)[:, None, :] - means[None]
    return np.einsum("bcd,de,bce->bc", diff, precision, diff).min(axis=1)


@dataclass
class CalibrationFit:
    """Everything fitted, with the validation figures that justify it (recorded in the manifest)."""

    temperature: float
    class_means: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float  # the share of validation images below the threshold
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    val_flagged: float  # share of validation images with novelty > 1
    fit_images: int
    val_images: int

    def record(self) -> dict[str, Any]:
        """The manifest's ``calibration`` section: figures only (the statistics are in weights.pt)."""
        data = asdict(self)
        del data["class_means"], data["precision"]
        return data


def fit_calibration(fit_features: np.ndarray, fit_labels: np.ndarray, val_logits: np.ndarray,
                    val_features: np.ndarray, val_labels: np.ndarray, num_classes: int,
                    quantile: float = 0.96) -> CalibrationFit:
    """Temperature on the validation logits; class Gaussians on the fit split's features; the novelty
    threshold at ``quantile`` of the validation distances."""
    temperature = fit_temperature(val_logits, val_labels)
    means, precision = class_gaussians(fit_features, fit_labels, num_classes)
    distances = mahalanobis_to_nearest(val_features, means, precision)
    threshold = float(np.quantile(distances, quantile))
    return CalibrationFit(
        temperature=temperature, class_means=means, precision=precision, threshold=threshold, quantile=quantile,
        ece_before=expected_calibration_error(softmax(val_logits), val_labels),
        ece_after=expected_calibration_error(softmax(val_logits / temperature), val_labels),
        nll_before=negative_log_likelihood(val_logits, val_labels, 1.0),
        nll_after=negative_log_likelihood(val_logits, val_labels, temperature),
        val_flagged=float(np.mean(distances > threshold)), fit_images=len(fit_labels), val_images=len(val_labels))
