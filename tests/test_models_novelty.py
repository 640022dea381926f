"""Calibration and the novelty score: the numbers on tiny cases against hand-computed values, and a calibrated
package answering the same through torch and ONNX Runtime."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from vitcodec.models.novelty import (
    Calibration,
    CalibrationFit,
    class_gaussians,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    mahalanobis_to_nearest,
    negative_log_likelihood,
    softmax,
)


def test_ece_by_hand() -> None:
    # bin (0.6, 0.667]: confidences 0.62, 0.64 with one right -> |0.5 - 0.63| = 0.13, weight 2/4
    # bin (0.933, 1.0]: confidences 0.95, 0.97, both right -> |1 - 0.96| = 0.04, weight 2/4
    probs = np.array([[0.62, 0.38], [0.36, 0.64], [0.95, 0.05], [0.03, 0.97]])
    labels = np.array([0, 0, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.13 + 0.5 * 0.04)


def test_nll_by_hand() -> None:
    logits = np.array([[2.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 0])
    expected = np.mean([math.log(1 + math.exp(-2)), math.log(1 + math.exp(1))])
    assert negative_log_likelihood(logits, labels, 1.0) == pytest.approx(expected)
    assert negative_log_likelihood(logits, labels, 2.0) == pytest.approx(
        np.mean([math.log(1 + math.exp(-1)), math.log(1 + math.exp(0.5))]))


def test_temperature_recovers_a_known_overconfidence() -> None:
    """Logits drawn so that softmax(logits / 3) is the true label distribution: the fitted T is about 3."""
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (20_000, 5))
    labels = np.array([rng.choice(5, p=p) for p in softmax(true_logits)])
    t = fit_temperature(true_logits * 3.0, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    scaled = true_logits * 3.0
    assert negative_log_likelihood(scaled, labels, t) < negative_log_likelihood(scaled, labels, 1.0)


def test_mahalanobis_by_hand() -> None:
    features = np.array([[1.0, 0.0], [3.0, 0.0], [-1.0, 2.0], [-3.0, 2.0]])
    labels = np.array([0, 0, 1, 1])
    means, precision = class_gaussians(features, labels, 2, ridge=0.0 + 1e-12)
    assert np.allclose(means, [[2.0, 0.0], [-2.0, 2.0]])
    # centred: (±1, 0) for both classes -> covariance diag(1, ~0); use a ridge to make it invertible
    means, precision = class_gaussians(features, labels, 2, ridge=1.0)
    assert np.allclose(precision, np.diag([1 / 2.0, 1 / 1.0]))
    d = mahalanobis_to_nearest(np.array([[2.0, 1.0], [0.0, 0.0]]), means, precision)
    assert np.allclose(d, [1.0, min(4 / 2, 4 / 2 + 4)])


def test_a_class_without_images_is_an_error() -> None:
    with pytest.raises(ValueError, match="class"):
        class_gaussians(np.zeros((4, 2)), np.array([0, 0, 2, 2]), 3)


def test_fit_calibration_threshold_fires_on_the_chosen_share() -> None:
    rng = np.random.default_rng(1)
    fit_features = rng.normal(0, 1, (2000, 8)) + np.repeat(np.eye(8)[:4] * 5, 500, axis=0)
    fit_labels = np.repeat(np.arange(4), 500)
    val_features = rng.normal(0, 1, (1000, 8)) + np.repeat(np.eye(8)[:4] * 5, 250, axis=0)
    val_labels = np.repeat(np.arange(4), 250)
    val_logits = 4.0 * val_features[:, :4]
    fit = fit_calibration(fit_features, fit_labels, val_logits, val_features, val_labels, 4, quantile=0.95)
    assert fit.val_flagged == pytest.approx(0.05, abs=0.002)
    far = np.full((1, 8), 12.0)
    assert mahalanobis_to_nearest(far, fit.class_means, fit.precision)[0] > fit.threshold
    assert fit.nll_after <= fit.nll_before  # the temperature minimises the NLL (not necessarily the ECE)
    assert set(fit.record()) >= {"temperature", "threshold", "ece_before", "ece_after", "val_flagged"}
    assert "precision" not in fit.record()


def test_calibration_module_matches_the_numpy_reference() -> None:
    rng = np.random.default_rng(2)
    means, precision = class_gaussians(rng.normal(0, 1, (300, 6)), np.repeat(np.arange(3), 100), 3)
    fit = CalibrationFit(temperature=2.0, class_means=means, precision=precision, threshold=7.0, quantile=0.96,
                         ece_before=0, ece_after=0, nll_before=0, nll_after=0, val_flagged=0, fit_images=300,
                         val_images=0)
    module = Calibration(6, 3)
    module.load_fit(fit)
    pooled = rng.normal(0, 2, (5, 6)).astype(np.float32)
    novelty = module.novelty(torch.from_numpy(pooled)).numpy()
    assert np.allclose(novelty, mahalanobis_to_nearest(pooled, means, precision) / 7.0, rtol=1e-4)
    assert torch.allclose(module.scale(torch.tensor([[4.0, 2.0]])), torch.tensor([[2.0, 1.0]]))


def test_a_calibrated_package_agrees_across_backends(tmp_path) -> None:
    """Export, calibrate on a slice of Fashion-MNIST's fit/val splits through real bitstreams, then the torch
    and ONNX Runtime backends give the same probabilities and novelty, and the model id is unchanged."""
    from vitcodec.cloud.backends import make_loader
    from vitcodec.models.calibrate import calibrate_package
    from vitcodec.models.export import export_package
    from vitcodec.models.inference import CloudModel
    from vitcodec.models.registry import create_model
    from vitcodec.packages import ModelPackage

    torch.manual_seed(3)
    net = create_model("jcc-fmnist-28-s8", tokenizer="conv", pool="seq")
    package = export_package(net, tmp_path, name="tiny")
    model_id = package.model_id
    fit = calibrate_package(package, "fashion-mnist", fit_images=400, val_images=200)
    package = ModelPackage.open(package.path)
    assert package.manifest["config"]["calibrated"] is True
    assert package.manifest["calibration"]["temperature"] == pytest.approx(fit.temperature)
    assert package.model_id == model_id
    y_hat = np.random.default_rng(0).normal(0, 2, (3, 128, 4, 4)).astype(np.float32)
    torch_probs, torch_novelty = CloudModel(package).analyse_latents(y_hat)
    ort_probs, ort_novelty = make_loader("onnxruntime", "cpu")(package).analyse_latents(y_hat)
    assert np.allclose(torch_probs, ort_probs, atol=1e-5)
    assert torch_novelty is not None and np.allclose(torch_novelty, ort_novelty, rtol=1e-4)
