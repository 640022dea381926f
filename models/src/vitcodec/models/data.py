"""Datasets named by a spec string: ``fashion-mnist``, ``imagefolder:PATH``, ``synthetic``.

Everything is offline: Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package (IDX files),
or from ``VITCODEC_FMNIST_DIR``. Samples come out as normalised float tensors sized for the model.

Splits: ``train`` and ``test`` as the dataset ships them, and a validation split held out of ``train``:
``val`` is a fixed random subset of the training images (`VAL_SIZE`, the same for every seed and run) and
``fit`` the rest. Every choice of recipe, temperature or threshold is made on ``val``; ``test`` only
measures shipped models.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from vitcodec.edge.preprocess import ImageReadError, load_image, standardise, to_batch, to_pixels
from vitcodec.models.config import JCCConfig
from vitcodec.models.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

FMNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def fmnist_dir() -> Path:
    return Path(os.environ.get("VITCODEC_FMNIST_DIR", FMNIST_DEFAULT_DIR))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): big-endian header, magic 0x0000080N, then dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def load_fashion_mnist(split: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels int64 [n]) of the ``train`` or ``test`` split."""
    if split not in _FMNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = root or fmnist_dir()
    paths = []
    for stem in _FMNIST_FILES[split]:
        candidates = [root / f"{stem}.gz", root / stem]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise DataError(
                f"Fashion-MNIST file {stem}[.gz] not found in {root}. Install it with "
                "`apt-get install dataset-fashion-mnist` or point VITCODEC_FMNIST_DIR at the IDX files."
            )
        paths.append(found)
    images, labels = read_idx(paths[0]), read_idx(paths[1]).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} images but {len(labels)} labels")
    return images, labels


def synthetic_images(n: int, size: tuple[int, int], channels: int, num_classes: int,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Procedural labelled images for tests: the class sets a stripe frequency and orientation.

    Learnable within a few steps yet not trivial (random phase, contrast and noise).
    """
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    labels = rng.integers(0, num_classes, size=n)
    images = np.empty((n, h, w, channels), dtype=np.uint8)
    for i, label in enumerate(labels):
        angle = np.pi * (label % 4) / 4
        freq = 2 * np.pi * (1 + label // 4) / max(h, w) * 2
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        img = 127.5 + rng.uniform(60, 120) * wave[..., None] + rng.normal(0, 10, (h, w, channels))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def to_model_tensor(images: np.ndarray | list[np.ndarray], config: JCCConfig) -> Tensor:
    """uint8 images [n, h, w(, c)] -> normalised float [n, C, H, W] at the model's input size.

    The edge's own preprocessing (`vitcodec.edge.preprocess`) does the work, so training sees exactly the
    tensor a device sends: smaller images are zero-padded centred, larger ones resized (bilinear), the
    channel count converted to the model's ``in_chans``.
    """
    spec = config.input_spec()
    # to_batch only iterates over a list, so a list of arrays is a valid input (its `list[...]` type is invariant)
    batch = to_batch(cast("list[Image.Image | np.ndarray] | np.ndarray", images), spec)
    return torch.from_numpy(standardise(batch, spec))


class TensorImageDataset(Dataset):
    """Pre-normalised images held in memory (Fashion-MNIST is 47 MB as float), optional augmentation."""

    def __init__(self, images: Tensor, labels: Tensor, augment: Callable[[Tensor], Tensor] | None = None,
                 labels_names: tuple[str, ...] = ()) -> None:
        self.images, self.labels, self.augment = images, labels, augment
        self.label_names = labels_names

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x = self.images[index]
        if self.augment is not None:
            x = self.augment(x)
        return x, self.labels[index]


class RandomCropFlip:
    """Standard small-image augmentation: reflect-pad then random crop, and a horizontal flip."""

    def __init__(self, pad: int = 2, flip: bool = True, seed: int | None = None) -> None:
        self.pad, self.flip = pad, flip
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if self.pad:
            padded = F.pad(x[None], (self.pad,) * 4, mode="reflect")[0]
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,), generator=self.generator).tolist()
            x = padded[:, dy: dy + h, dx: dx + w]
        if self.flip and torch.rand((), generator=self.generator) < 0.5:
            x = x.flip(-1)
        return x


SPLITS = ("train", "test", "fit", "val")
VAL_SIZE = 5000  # Fashion-MNIST: 5k of the 60k training images (8.3 %)
VAL_FRACTION = 0.1  # smaller training sets hold out this share instead
_VAL_SPLIT_SEED = 20221  # fixed: the validation split never moves with the training seed


def validation_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, val) indices into a training split of ``n`` images: a seeded permutation's first `VAL_SIZE`
    (or `VAL_FRACTION` of ``n`` when that is under half) are held out, each part sorted."""
    val_size = VAL_SIZE if n >= 2 * VAL_SIZE else max(1, int(round(VAL_FRACTION * n)))
    order = np.random.default_rng(_VAL_SPLIT_SEED).permutation(n)
    return np.sort(order[val_size:]), np.sort(order[:val_size])


def load_arrays(spec: str, split: str, config: JCCConfig, limit: int | None = None,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Raw uint8 images, labels and label names for a dataset spec and split (`SPLITS`; no resizing yet).
    ``limit`` keeps the first N images of the split."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if split in ("fit", "val"):
        images, labels, names = load_arrays(spec, "train", config, seed=seed)
        fit, val = validation_indices(len(labels))
        chosen = fit if split == "fit" else val
        images, labels = images[chosen], labels[chosen]
        return (images[:limit], labels[:limit], names) if limit is not None else (images, labels, names)
    if spec == "fashion-mnist":
        from vitcodec.models.registry import FASHION_MNIST_LABELS

        images, labels = load_fashion_mnist(split)
        names: tuple[str, ...] = FASHION_MNIST_LABELS
    elif spec == "synthetic":
        n = limit or (2048 if split == "train" else 512)
        images, labels = synthetic_images(n, config.img_size, config.in_chans, config.num_classes,
                                          seed=seed + (0 if split == "train" else 1))
        names = tuple(f"class-{i}" for i in range(config.num_classes))
    elif spec.startswith("imagefolder:"):
        images, labels, names = _load_imagefolder(Path(spec.split(":", 1)[1]), split, config)
    else:
        raise DataError(f"unknown dataset {spec!r}: use fashion-mnist, synthetic or imagefolder:PATH")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels, names


def _load_imagefolder(root: Path, split: str, config: JCCConfig) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """ROOT/<split>/<class>/*.png (or ROOT/<class>/* when there is no split folder), read and fitted to the
    model size by the edge's own functions (EXIF orientation, mode conversion, pad or resize)."""
    base = root / split if (root / split).is_dir() else root
    if not base.is_dir():
        raise DataError(f"image folder {base} does not exist")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"image folder {base} has no class sub-folders")
    spec = config.input_spec()
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((base / name).iterdir()):
            if not path.is_file():
                continue
            try:
                images.append(to_pixels(load_image(path), spec))
            except ImageReadError as exc:
                raise DataError(f"cannot read image {exc}") from None
            labels.append(label)
    if not images:
        raise DataError(f"image folder {base} holds no images")
    return np.stack(images), np.asarray(labels, dtype=np.int64), tuple(classes)


def load_pixels(spec: str, split: str, config: JCCConfig, limit: int | None = None,
                seed: int = 0) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """uint8 ``(n, C, H, W)`` images fitted to the model's input by the edge's own functions (pad or resize,
    channels), int64 labels and label names: what `vitcodec.models.batches.InMemoryBatches` holds."""
    from vitcodec.models.batches import to_uint8_nchw

    images, labels, names = load_arrays(spec, split, config, limit=limit, seed=seed)
    return to_uint8_nchw(to_batch(images, config.input_spec())), torch.from_numpy(labels), names


def build_dataset(spec: str, split: str, config: JCCConfig, augment: bool = False,
                  limit: int | None = None, seed: int = 0) -> TensorImageDataset:
    images, labels, names = load_arrays(spec, split, config, limit=limit, seed=seed)
    x = to_model_tensor(images, config)
    aug = RandomCropFlip() if augment else None
    return TensorImageDataset(x, torch.from_numpy(labels), aug, names)
