"""The loss terms against values computed by hand on a tiny case."""

from __future__ import annotations

import math

import pytest
import torch
from vitcodec.models.losses import JointLoss, LossWeights, bits_per_pixel, quality_weights


def test_quality_weights_are_the_papers() -> None:
    assert quality_weights(1) == (0.1, 0.001)
    assert quality_weights(2) == (0.3, 0.003)
    assert quality_weights(3) == (0.6, 0.006)
    with pytest.raises(ValueError):
        quality_weights(4)


def test_bpp_by_hand() -> None:
    # 2 images of 2x2 pixels; y likelihoods 0.5 each (4 symbols per image -> 4 bits), z 0.25 (1 symbol -> 2 bits)
    y = torch.full((2, 1, 2, 2), 0.5)
    z = torch.full((2, 1, 1, 1), 0.25)
    assert bits_per_pixel([y, z], num_pixels=4).item() == pytest.approx(6 / 4)


def test_joint_loss_by_hand() -> None:
    mean, std = (0.5,), (0.25,)
    loss = JointLoss(LossWeights(alpha=0.3, beta=0.003, rate=1.0), mean, std)
    x = torch.zeros(1, 1, 2, 2)  # normalised 0 -> pixel 0.5 -> 127.5
    x_hat = torch.full((1, 1, 2, 2), 0.04)  # pixel 0.5 + 0.01 -> +2.55 on the 0..255 scale
    logits = torch.tensor([[2.0, 0.0]])
    out = {"logits": logits, "x_hat": x_hat,
           "likelihoods_y": torch.full((1, 1, 2, 2), 0.5), "likelihoods_z": torch.full((1, 1, 1, 1), 0.5)}
    terms = loss(out, x, torch.tensor([0]))
    ce = -math.log(math.exp(2) / (math.exp(2) + 1))
    mse = 2.55**2
    bpp = 5 / 4
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["mse"].item() == pytest.approx(mse, rel=1e-4)
    assert terms["bpp"].item() == pytest.approx(bpp, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(0.3 * ce + 0.003 * mse + bpp, rel=1e-5)


def test_step_one_loss_has_no_rate() -> None:
    loss = JointLoss(LossWeights(alpha=1.0, beta=0.0, rate=0.0), (0.0,), (1.0,))
    out = {"logits": torch.tensor([[0.0, 0.0]])}
    terms = loss(out, torch.zeros(1, 1, 2, 2), torch.tensor([1]))
    assert set(terms) == {"ce", "loss"}
    assert terms["loss"].item() == pytest.approx(math.log(2))
