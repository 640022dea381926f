"""A small, strong CNN that classifies pixels: the conventional pipeline's classifier and the distillation
teacher.

The rate–accuracy benchmark needs a pixel classifier that the zoo is measured against (raw images, and
images decoded from JPEG/WebP/AVIF with the classifier fine-tuned on them), and step one and step two of
the zoo's training can distil from it. Both need the same network, trained by the project's own code on the
project's own data loading, so it lives here rather than in a benchmark script.

The network takes images scaled to [0, 1] and normalises them itself (its mean/std travel in its config),
so a caller that holds the JCC's normalised tensors only has to undo that normalisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from vitcodec.models.batches import random_erase
from vitcodec.models.data import RandomCropFlip, TensorImageDataset

KIND = "pixel-cnn"  # the checkpoint's kind tag, so a JCC checkpoint is never loaded as a teacher


@dataclass(frozen=True)
class PixelCNNConfig:
    """Stages of 3×3 conv–BN–ReLU layers, each stage ending in a 2×2 max-pool, then an MLP head. The default
    (32 | 64, 64 | 128 channels: four convs, 28 -> 14 -> 7 -> 3) puts the width where the map is small, which
    trains about as fast on CPU as a two-conv net with the same first layer."""

    img_size: tuple[int, int] = (28, 28)
    in_chans: int = 1
    stages: tuple[tuple[int, ...], ...] = ((32,), (64, 64), (128,))
    hidden: int = 256
    dropout: float = 0.3
    num_classes: int = 10
    mean: tuple[float, ...] = (0.2860,)
    std: tuple[float, ...] = (0.3530,)
    labels: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PixelCNNConfig:
        tuples = {"img_size", "mean", "std", "labels"}
        clean: dict[str, Any] = {k: tuple(v) if k in tuples else v for k, v in data.items()}
        if "stages" in clean:
            clean["stages"] = tuple(tuple(stage) for stage in clean["stages"])
        return cls(**clean)


class PixelCNN(nn.Module):
    """Pixels in [0, 1] (N, C, H, W) -> logits (N, classes)."""

    mean: Tensor  # buffers (registered in __init__), declared for the type checkers
    std: Tensor

    def __init__(self, config: PixelCNNConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or PixelCNNConfig()
        layers: list[nn.Module] = []
        chans = c.in_chans
        for stage in c.stages:
            for width in stage:
                layers += [nn.Conv2d(chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)]
                chans = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        h, w = c.img_size
        for _ in c.stages:
            h, w = h // 2, w // 2
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(c.dropout), nn.Linear(chans * h * w, c.hidden),
                                  nn.ReLU(inplace=True), nn.Dropout(c.dropout), nn.Linear(c.hidden, c.num_classes))
        self.register_buffer("mean", torch.tensor(c.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(c.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1:] != (self.config.in_chans, *self.config.img_size):
            raise ValueError(f"pixel CNN expects images of shape {(self.config.in_chans, *self.config.img_size)}, "
                             f"got {tuple(x.shape[1:])}")
        return self.head(self.features((x - self.mean) / self.std))


def parse_stages(spec: str) -> tuple[tuple[int, ...], ...]:
    """``"32/64,64/128"`` -> ``((32,), (64, 64), (128,))``: stages split by ``/``, conv widths by ``,``."""
    try:
        stages = tuple(tuple(int(w) for w in stage.split(",")) for stage in spec.split("/"))
    except ValueError:
        raise ValueError(f"stages must look like 32/64,64/128 (positive widths), got {spec!r}") from None
    if not stages or any(not stage or min(stage) <= 0 for stage in stages):
        raise ValueError(f"stages must look like 32/64,64/128 (positive widths), got {spec!r}")
    return stages


def to_unit_tensor(images: np.ndarray) -> Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) -> float (N, C, H, W) in [0, 1]."""
    array = images[..., None] if images.ndim == 3 else images
    return torch.from_numpy(array.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0))


@dataclass
class FitSettings:
    """How `fit` trains: AdamW with the zoo's warmup + cosine schedule, crop/flip augmentation."""

    epochs: float = 8.0
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_steps: int = 100
    augment: bool = True
    label_smoothing: float = 0.0
    erase_prob: float = 0.0  # random erasing per image (to black, the Fashion-MNIST background); 0 = off
    seed: int = 0


def fit(model: PixelCNN, images: np.ndarray, labels: np.ndarray, settings: FitSettings,
        on_step: Callable[[int, int], None] | None = None) -> PixelCNN:
    """Train (or fine-tune, from the weights it has) on uint8 images; ``on_step(step, total)`` after each step.

    The data path is the project's: `TensorImageDataset` holding the images in memory, `RandomCropFlip`
    (reflect-pad 2, random crop, horizontal flip) when augmenting, and the schedule of `vitcodec train`.
    """
    from vitcodec.models.train import lr_schedule

    generator = torch.Generator().manual_seed(settings.seed)
    dataset = TensorImageDataset(to_unit_tensor(images), torch.from_numpy(np.asarray(labels, dtype=np.int64)),
                                 RandomCropFlip(seed=settings.seed) if settings.augment else None)
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, generator=generator,
                        drop_last=len(dataset) > settings.batch_size)
    total = max(1, int(round(settings.epochs * len(loader))))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = lr_schedule(optimizer, min(settings.warmup_steps, total // 2), total)
    erase_generator = torch.Generator().manual_seed(settings.seed + 1)
    model.train()
    step = 0
    while step < total:
        for x, y in loader:
            if settings.erase_prob > 0:
                x = random_erase(x, settings.erase_prob, erase_generator)
            loss = F.cross_entropy(model(x), y, label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if on_step:
                on_step(step, total)
            if step >= total:
                break
    model.eval()
    return model


@torch.inference_mode()
def predict(model: PixelCNN, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits (N, classes) for uint8 images, in eval mode."""
    model.eval()
    out = [model(to_unit_tensor(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def accuracy(model: PixelCNN, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predict(model, images).argmax(1) == np.asarray(labels)).mean())


def save_pixel_cnn(path: Path, model: PixelCNN, **extra: Any) -> None:
    """One file: kind tag, config, weights, and whatever the caller records (training settings, accuracy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": KIND, "config": model.config.to_dict(), "model": model.state_dict(), **extra}, path)


def load_pixel_cnn(path: Path, device: str | torch.device = "cpu") -> PixelCNN:
    """A trained pixel CNN in eval mode; a missing file or another kind of checkpoint is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pixel CNN checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
        raise ValueError(f"{path} is not a pixel CNN checkpoint (no kind={KIND!r}; the teacher comes from "
                         "benchmarks/bench_rate_accuracy.py --cache DIR)")
    model = PixelCNN(PixelCNNConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()
