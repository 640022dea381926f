"""Distillation from the pixel CNN: the loss against hand-computed values, the teacher's view of the
trainer's batches, and real training steps with a teacher (and without one, unchanged)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vitcodec.models.data import build_dataset, load_arrays
from vitcodec.models.losses import JointLoss, LossWeights, distillation_loss
from vitcodec.models.pixel_cnn import PixelCNN, load_pixel_cnn, predict, save_pixel_cnn
from vitcodec.models.registry import get_preset
from vitcodec.models.train import TrainSettings, _teacher_logits, train

STUDENT = torch.tensor([[1.0, 0.0]])
TEACHER = torch.tensor([[0.0, 1.0]])
TARGET = torch.tensor([0])
CE = math.log(1 + math.exp(-1))  # CE(student, label 0)


def _softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_soft_distillation_by_hand() -> None:
    tau, weight = 2.0, 0.25
    p_t, p_s = _softmax([0.0, 0.5]), _softmax([0.5, 0.0])  # logits / tau
    kl = sum(t * math.log(t / s) for t, s in zip(p_t, p_s))
    mix, kd = distillation_loss(STUDENT, TEACHER, TARGET, "soft", weight, tau)
    assert kd.item() == pytest.approx(tau**2 * kl, rel=1e-6)
    assert mix.item() == pytest.approx((1 - weight) * CE + weight * tau**2 * kl, rel=1e-6)


def test_hard_distillation_by_hand() -> None:
    # the teacher's argmax is class 1: CE(student, 1) = log(1 + e)
    mix, kd = distillation_loss(STUDENT, TEACHER, TARGET, "hard", 0.5, tau=7.0)  # tau plays no part
    assert kd.item() == pytest.approx(math.log(1 + math.e), rel=1e-6)
    assert mix.item() == pytest.approx(0.5 * CE + 0.5 * math.log(1 + math.e), rel=1e-6)


def test_distillation_with_an_agreeing_teacher_and_bad_mode() -> None:
    _, kd = distillation_loss(STUDENT, STUDENT * 1.0, TARGET, "soft", 0.5, 3.0)
    assert kd.item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="soft"):
        distillation_loss(STUDENT, TEACHER, TARGET, "feature", 0.5)


def test_joint_loss_mixes_the_teacher_into_the_accuracy_term_only() -> None:
    weights = LossWeights(alpha=0.3, beta=0.0, rate=1.0, distill="hard", distill_alpha=0.5)
    out = {"logits": STUDENT, "likelihoods_y": torch.full((1, 1, 2, 2), 0.5),
           "likelihoods_z": torch.full((1, 1, 1, 1), 0.5)}
    terms = JointLoss(weights, (0.0,), (1.0,))(out, torch.zeros(1, 1, 2, 2), TARGET, TEACHER)
    assert terms["ce"].item() == pytest.approx(CE, rel=1e-6)  # the label CE is still logged
    assert terms["loss"].item() == pytest.approx(0.3 * (0.5 * CE + 0.5 * math.log(1 + math.e)) + 5 / 4, rel=1e-6)
    # no teacher given, or no distillation asked for: the loss of old
    plain = JointLoss(LossWeights(alpha=0.3, beta=0.0, rate=1.0), (0.0,), (1.0,))(out, torch.zeros(1, 1, 2, 2),
                                                                                     TARGET, TEACHER)
    assert "kd" not in plain and plain["loss"].item() == pytest.approx(0.3 * CE + 5 / 4, rel=1e-6)


def test_teacher_sees_the_batch_as_pixels_in_0_1() -> None:
    config = get_preset("jcc-fmnist-28-s8")
    torch.manual_seed(0)
    teacher = PixelCNN().eval()
    raw, _, _ = load_arrays("synthetic", "train", config, limit=16)
    batch = build_dataset("synthetic", "train", config, limit=16).images  # what the trainer's loader yields
    stage = SimpleNamespace(teacher=teacher, criterion=JointLoss(LossWeights(), config.mean, config.std))
    assert torch.allclose(_teacher_logits(stage, batch), torch.from_numpy(predict(teacher, raw)), atol=1e-4)


def _teacher_file(path: Path) -> Path:
    torch.manual_seed(1)
    save_pixel_cnn(path, PixelCNN())
    return path


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_training_steps_with_a_teacher(tmp_path: Path, mode: str) -> None:
    teacher = _teacher_file(tmp_path / "teacher.pt")
    common = dict(preset="jcc-fmnist-28-s8", data="synthetic", batch_size=16, limit=32, log_every=1,
                  progress=False, warmup_steps=1, teacher=teacher, distill=mode, distill_alpha=0.5, distill_tau=2.0)
    train(TrainSettings(out=tmp_path / "pre", stage="pretrain", max_steps=1, **common))
    train(TrainSettings(out=tmp_path / "joint", stage="joint", init=tmp_path / "pre" / "final.pt", alpha=0.3,
                        beta=0.001, max_steps=1, **common))
    for run in ("pre", "joint"):
        (line,) = _log(tmp_path / run)
        assert np.isfinite(line["kd"]) and line["kd"] > 0 and np.isfinite(line["loss"])
        assert json.loads((tmp_path / run / "settings.json").read_text())["distill"] == mode


def test_without_a_teacher_nothing_changes(tmp_path: Path) -> None:
    settings = TrainSettings(out=tmp_path, stage="pretrain", data="synthetic", batch_size=16, limit=32,
                             max_steps=1, progress=False, log_every=1)
    assert settings.loss_weights() == LossWeights(alpha=1.0, beta=0.0002, rate=0.0)
    train(settings)
    assert "kd" not in _log(tmp_path)[0]


def test_bad_teachers_are_clear_errors(tmp_path: Path) -> None:
    common = dict(stage="pretrain", data="synthetic", limit=32, batch_size=16, max_steps=1, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(TrainSettings(out=tmp_path / "a", teacher=tmp_path / "missing.pt", **common))
    torch.save({"model": {}}, tmp_path / "not-a-teacher.pt")
    with pytest.raises(ValueError, match="not a pixel CNN checkpoint"):
        train(TrainSettings(out=tmp_path / "b", teacher=tmp_path / "not-a-teacher.pt", **common))
    with pytest.raises(ValueError, match="teacher .* takes 1x28x28"):
        train(TrainSettings(out=tmp_path / "c", preset="jcc-fmnist-32", teacher=_teacher_file(tmp_path / "t.pt"),
                            **common))
    with pytest.raises(ValueError, match="--distill must be one of"):
        train(TrainSettings(out=tmp_path / "d", teacher=tmp_path / "t.pt", distill="feature", **common))
    assert load_pixel_cnn(tmp_path / "t.pt").config.img_size == (28, 28)


def test_cli_passes_the_distillation_flags(tmp_path: Path) -> None:
    from typer.testing import CliRunner
    from vitcodec.models.cli import app

    teacher = _teacher_file(tmp_path / "teacher.pt")
    base = ["train", "--data", "synthetic", "--limit", "32", "--batch-size", "16", "--max-steps", "1", "--no-progress"]
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "run"), "--teacher", str(teacher),
                                      "--distill", "hard", "--distill-alpha", "0.7", "--distill-tau", "3"])
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert (settings["teacher"], settings["distill"], settings["distill_alpha"], settings["distill_tau"]) == \
        (str(teacher), "hard", 0.7, 3.0)
    assert "kd" in _log(tmp_path / "run")[0]
    exported = CliRunner().invoke(app, ["export", "--model", str(tmp_path / "run" / "final.pt"),
                                        "--out", str(tmp_path / "zoo"), "--name", "distilled"])
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((tmp_path / "zoo" / "distilled" / "1" / "manifest.json").read_text())
    assert {k: manifest["training"][k] for k in ("teacher", "distill", "distill_alpha", "distill_tau")} == \
        {"teacher": "teacher.pt", "distill": "hard", "distill_alpha": 0.7, "distill_tau": 3.0}
    bad = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "bad"), "--teacher", str(tmp_path / "none.pt")])
    assert bad.exit_code != 0 and "does not exist" in bad.output and "Traceback" not in bad.output


def test_teacher_command_trains_a_usable_teacher(tmp_path: Path) -> None:
    """`vitcodec teacher` writes the file `train --teacher` takes, with what trained it and its test top-1."""
    from typer.testing import CliRunner
    from vitcodec.models.cli import app

    out = tmp_path / "teacher.pt"
    result = CliRunner().invoke(app, ["teacher", "--out", str(out), "--epochs", "1", "--limit", "512",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "top-1" in result.output
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["settings"]["n"] == 512 and ckpt["settings"]["epochs"] == 1.0
    assert 0.1 < ckpt["test_top1"] <= 1.0  # four steps on 512 images: above chance, far from trained
    assert load_pixel_cnn(out).config.img_size == (28, 28)
    train(TrainSettings(out=tmp_path / "run", stage="pretrain", data="synthetic", batch_size=16, limit=32,
                        max_steps=1, progress=False, log_every=1, teacher=out, distill="hard"))
    assert "kd" in _log(tmp_path / "run")[0]


def test_teacher_on_the_fit_split_is_measured_on_validation(tmp_path: Path) -> None:
    """`--split fit` holds the validation split out and reports on it (never on test); the stage layout and
    random erasing reach the network and the recorded settings; a malformed layout is a one-line error."""
    from typer.testing import CliRunner
    from vitcodec.models.cli import app
    from vitcodec.models.pixel_cnn import parse_stages

    assert parse_stages("32,32/64") == ((32, 32), (64,))
    out = tmp_path / "teacher.pt"
    result = CliRunner().invoke(app, ["teacher", "--out", str(out), "--epochs", "1", "--limit", "256",
                                      "--split", "fit", "--stages", "8,8/16", "--hidden", "32",
                                      "--erase-prob", "0.5", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "5000 val images" in result.output
    ckpt = torch.load(out, weights_only=True)
    assert "test_top1" not in ckpt and 0.0 <= ckpt["val_top1"] <= 1.0
    assert ckpt["settings"]["split"] == "fit" and ckpt["settings"]["erase_prob"] == 0.5
    teacher = load_pixel_cnn(out)
    assert teacher.config.stages == ((8, 8), (16,)) and teacher.config.hidden == 32
    bad = CliRunner().invoke(app, ["teacher", "--out", str(tmp_path / "x.pt"), "--stages", "8,,16"])
    assert bad.exit_code != 0 and "stages must look like" in bad.output
