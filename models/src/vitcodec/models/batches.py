"""The training input pipeline: the whole dataset as one uint8 tensor, batches cut and augmented in one go.

Why not a ``DataLoader`` over a ``Dataset``: on a 2-core machine the per-image ``__getitem__``, per-image
reflect-pad and the collate cost as much as the small network's forward pass. Holding the images as one
uint8 tensor ``[n, C, H, W]`` (Fashion-MNIST's 60k images are 47 MB) and augmenting a whole batch with a few
tensor operations removes that cost. Normalisation is the edge's own (`vitcodec.edge.preprocess.standardise`,
written with the same float32 operations in the same order), so an unaugmented batch is bit-identical to what
a device sends.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from vitcodec.packages import InputSpec


def to_uint8_nchw(pixels: np.ndarray) -> Tensor:
    """uint8 ``(n, H, W, C)`` pixels (as `vitcodec.edge.preprocess.to_batch` returns them) -> ``(n, C, H, W)``."""
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))


def normalise(pixels: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 ``(B, C, H, W)`` -> float32 ``(pixel / 255 - mean) / std``: the edge's arithmetic, step by step."""
    x = pixels.to(torch.float32) / torch.tensor(255.0, dtype=torch.float32)
    return (x - mean) / std


@dataclass(frozen=True)
class Augmentation:
    """Batched augmentation of normalised images.

    ``crop_pad``: reflect-pad by this many pixels and crop back at a random offset (per image).
    ``flip``: horizontal flip with probability 1/2 (per image).
    ``erase_prob``: random erasing (Zhong et al. 2020): with this probability a rectangle of 2–33 % of the
    image, aspect ratio 0.3–3.3, is set to 0 in normalised space (the dataset mean), per image.
    """

    crop_pad: int = 2
    flip: bool = True
    erase_prob: float = 0.0

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if self.crop_pad:
            x = random_crop(x, self.crop_pad, generator)
        if self.flip:
            flip = torch.rand(x.shape[0], generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.erase_prob > 0:
            x = random_erase(x, self.erase_prob, generator)
        return x


def random_crop(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Reflect-pad the batch, then crop each image at its own offset in ``[0, 2·pad]`` (two gathers)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, c, h, w + 2 * pad)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def random_erase(x: Tensor, prob: float, generator: torch.Generator, area: tuple[float, float] = (0.02, 1 / 3),
                 log_ratio: tuple[float, float] = (math.log(0.3), math.log(1 / 0.3))) -> Tensor:
    """Zero one random rectangle in a random subset of the batch (boxes clipped to the image)."""
    b, _, h, w = x.shape
    chosen = torch.rand(b, generator=generator) < prob
    target = h * w * (area[0] + (area[1] - area[0]) * torch.rand(b, generator=generator))
    ratio = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(b, generator=generator))
    eh = torch.sqrt(target * ratio).round().clamp(1, h).long()
    ew = torch.sqrt(target / ratio).round().clamp(1, w).long()
    y0 = (torch.rand(b, generator=generator) * (h - eh + 1)).long()
    x0 = (torch.rand(b, generator=generator) * (w - ew + 1)).long()
    ys, xs = torch.arange(h), torch.arange(w)
    inside_y = (ys[None] >= y0[:, None]) & (ys[None] < (y0 + eh)[:, None])
    inside_x = (xs[None] >= x0[:, None]) & (xs[None] < (x0 + ew)[:, None])
    mask = inside_y[:, :, None] & inside_x[:, None, :] & chosen[:, None, None]
    return x.masked_fill(mask[:, None], 0.0)


class InMemoryBatches:
    """Shuffled, augmented, normalised batches over uint8 images held in memory.

    Iterating gives one epoch. Under DDP each rank takes every ``world_size``-th index of the same seeded
    permutation (as ``DistributedSampler`` does); `set_epoch` reseeds the shuffle so epochs differ and a
    resumed run sees the same order it would have seen.
    """

    def __init__(self, pixels: Tensor, labels: Tensor, spec: InputSpec, batch_size: int,
                 augmentation: Augmentation | None = None, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True) -> None:
        if pixels.dtype != torch.uint8 or pixels.ndim != 4:
            raise ValueError(f"pixels must be uint8 (n, C, H, W), got {pixels.dtype} {tuple(pixels.shape)}")
        if len(pixels) != len(labels):
            raise ValueError(f"{len(pixels)} images but {len(labels)} labels")
        self.pixels, self.labels = pixels, labels
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.batch_size, self.augmentation = batch_size, augmentation
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last = drop_last and len(pixels) >= batch_size * world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> Tensor:
        order = torch.randperm(len(self.pixels), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        n = len(self.pixels) // self.world_size
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        indices = self._indices()
        generator = torch.Generator().manual_seed(10_007 * (self.seed + 1) + 101 * self.epoch + self.rank)
        for i in range(len(self)):
            batch = indices[i * self.batch_size:(i + 1) * self.batch_size]
            x = normalise(self.pixels[batch], self.mean, self.std)
            if self.augmentation is not None:
                x = self.augmentation(x, generator)
            yield x, self.labels[batch]
