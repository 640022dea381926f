"""A few real training steps lower the loss; the joint stage starts from step one; DDP runs on gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from vitcodec.models.train import TrainSettings, train


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


def test_pretrain_then_joint_lower_their_losses(tmp_path: Path) -> None:
    torch.manual_seed(0)
    common = dict(data="synthetic", batch_size=32, limit=256, log_every=1, progress=False, warmup_steps=1,
                  threads=2)
    pre = TrainSettings(out=tmp_path / "pre", stage="pretrain", preset="jcc-fmnist-28", max_steps=24, lr=2e-3,
                        **common)
    train(pre)
    log = _log(tmp_path / "pre")
    assert log[-1]["step"] == 24
    # logged values are running means over the epoch (8 steps here): compare whole epochs
    epoch_means = [r["ce"] for r in log if r["step"] % 8 == 0]
    assert epoch_means[-1] < epoch_means[0], f"step-one CE did not fall: {epoch_means}"
    assert (tmp_path / "pre" / "final.pt").exists()

    joint = TrainSettings(out=tmp_path / "joint", stage="joint", init=tmp_path / "pre" / "final.pt", quality=1,
                          max_steps=24, lr=1e-3, **common)
    train(joint)
    log = _log(tmp_path / "joint")
    assert all("bpp" in r for r in log)
    epoch_means = [r["loss"] for r in log if r["step"] % 8 == 0]
    assert epoch_means[-1] < epoch_means[0], f"step-two loss did not fall: {epoch_means}"


def test_training_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    settings = TrainSettings(out=tmp_path, stage="pretrain", preset="jcc-fmnist-28", data="synthetic", limit=64,
                             batch_size=32, max_steps=2, progress=False, log_every=1)
    train(settings)
    settings.max_steps = 4
    train(settings)
    steps = [r["step"] for r in _log(tmp_path)]
    assert steps == [1, 2, 3, 4]


def test_joint_needs_a_quality() -> None:
    with pytest.raises(ValueError, match="quality"):
        train(TrainSettings(out=Path("/nonexistent"), stage="joint"))


@pytest.mark.slow
def test_two_process_gloo_ddp(tmp_path: Path) -> None:
    """The issue's own command line: torchrun, 2 processes, gloo on CPU."""
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [str(venv_bin / "torchrun"), "--standalone", "--nproc-per-node", "2", "--no-python", "vitcodec", "train",
           "--preset", "jcc-fmnist-32", "--stage", "pretrain", "--data", "synthetic", "--max-steps", "4",
           "--out", str(tmp_path), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = _log(tmp_path)
    assert log[-1]["step"] == 4
    assert (tmp_path / "final.pt").exists()


@pytest.mark.parametrize("first_steps", [3, 6])  # resumed with the same schedule / a lengthened one
def test_resumed_learning_rates_follow_warmup_then_cosine(tmp_path: Path, first_steps: int) -> None:
    """The rates logged across a resume are those of one uninterrupted warmup + cosine schedule of the final
    length: scheduler state is saved in last.pt, and a run lengthened on resume replays the new schedule."""
    import math

    total, warmup, lr = 6, 2, 1e-3
    settings = TrainSettings(out=tmp_path, stage="pretrain", preset="jcc-fmnist-28", data="synthetic", limit=64,
                             batch_size=16, max_steps=first_steps, stop_at_step=3, lr=lr, warmup_steps=warmup,
                             progress=False, log_every=1)
    train(settings)
    settings.max_steps, settings.stop_at_step = total, None
    train(settings)
    logged = [r["lr"] for r in _log(tmp_path)]
    expected = [lr * (s + 1) / warmup if s < warmup else
                lr * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))) for s in range(total)]
    assert logged == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_holdout_measures_the_validation_split_each_epoch(tmp_path: Path) -> None:
    """Training on the fit split writes one val.jsonl line per epoch; --no-holdout writes none."""
    common = dict(stage="pretrain", preset="jcc-fmnist-28-s8", data="synthetic", limit=64, batch_size=32,
                  progress=False, log_every=1, erase_prob=0.25, overrides={"tokenizer": "conv", "pool": "seq"})
    train(TrainSettings(out=tmp_path / "held", max_steps=4, **common))
    val = [json.loads(line) for line in (tmp_path / "held" / "val.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in val] == [1, 2] and all(0.0 <= r["val_acc"] <= 1.0 for r in val)
    train(TrainSettings(out=tmp_path / "all", max_steps=2, holdout=False, **common))
    assert not (tmp_path / "all" / "val.jsonl").exists()


def test_step_two_starts_from_the_uncompressed_package_when_the_checkpoint_is_gone(tmp_path: Path) -> None:
    from vitcodec.models.train import build_model
    from vitcodec.packages import resolve_model

    package = resolve_model("fmnist-uncompressed")
    settings = TrainSettings(out=tmp_path, stage="joint", init=Path("fmnist-uncompressed"), quality=3)
    model, checkpoint = build_model(settings, torch.device("cpu"))
    assert checkpoint is None and model.training
    stored = torch.load(package.file("weights"), map_location="cpu", weights_only=True)
    state = model.state_dict()
    for key in ("g_a.0.weight", "vit.head.weight"):
        assert torch.equal(state[key], stored[key].float())
    with pytest.raises(ValueError, match="compressed"):
        build_model(TrainSettings(out=tmp_path, stage="joint", init=Path("fmnist-q2"), quality=3), torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="neither a checkpoint nor a model package"):
        build_model(TrainSettings(out=tmp_path, stage="joint", init=tmp_path / "missing", quality=3),
                    torch.device("cpu"))
