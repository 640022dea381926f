"""The training input pipeline: in-memory uint8 batches equal the edge's preprocessing, the batched
augmentations do what they say, and the validation split is fixed and disjoint from what training sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from vitcodec.models.batches import Augmentation, InMemoryBatches, normalise, random_crop, random_erase
from vitcodec.models.data import SPLITS, DataError, load_arrays, load_pixels, validation_indices
from vitcodec.models.registry import get_preset


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_unaugmented_batches_equal_the_edge_preprocessing(tmp_path: Path) -> None:
    """Same image, same tensor: the edge's `normalise` (numpy) and the trainer's batches (torch) agree bit
    for bit, for odd-size colour files fitted to a grey model by the edge's own functions."""
    from vitcodec.edge.preprocess import load_image, to_pixels
    from vitcodec.edge.preprocess import normalise as edge_normalise

    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    files = []
    for i, size in enumerate(((37, 53), (11, 9), (28, 28))):
        path = tmp_path / "a" / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8), "RGB").save(path)
        files.append(path)
    config = get_preset("jcc-fmnist-28-s8")
    spec = config.input_spec()
    pixels, labels, _ = load_pixels(f"imagefolder:{tmp_path}", "train", config)
    batches = InMemoryBatches(pixels, labels, spec, batch_size=3, augmentation=None, drop_last=False)
    batches._indices = lambda: torch.arange(3)  # type: ignore[method-assign]  # file order, to compare
    (x, _), = list(batches)
    edge = edge_normalise(np.stack([to_pixels(load_image(p), spec) for p in files]), spec)[..., :28, :28]
    assert x.dtype == torch.float32 and np.array_equal(x.numpy(), edge)


def test_normalise_is_the_edge_formula() -> None:
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = normalise(pixels, torch.tensor([0.2860]).view(1, -1, 1, 1), torch.tensor([0.3530]).view(1, -1, 1, 1))
    assert torch.isclose(x[0, 0, 0, 0], torch.tensor(-0.2860 / 0.3530))
    assert torch.isclose(x[0, 0, -1, -1], torch.tensor((1 - 0.2860) / 0.3530))


def test_random_crop_moves_each_image_by_its_own_offset() -> None:
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    for seed in range(20):
        out = random_crop(x, 2, _generator(seed))
        assert out.shape == x.shape
        for b in range(2):  # each output is a window of the reflect-padded image
            padded = torch.nn.functional.pad(x[b:b + 1], (2, 2, 2, 2), mode="reflect")[0, 0]
            windows = [padded[dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
            assert any(torch.equal(out[b, 0], w) for w in windows)
    offsets = {tuple(random_crop(x, 2, _generator(s))[0, 0, 2, 2:4].tolist()) for s in range(30)}
    assert len(offsets) > 5  # not one fixed shift


def test_random_erase_zeroes_one_rectangle_in_chosen_images() -> None:
    x = torch.ones(64, 1, 28, 28)
    out = random_erase(x, 0.5, _generator(1))
    erased = (out == 0).flatten(1).sum(1)
    chosen = erased > 0
    assert 10 < int(chosen.sum()) < 54  # about half
    for b in torch.nonzero(chosen).flatten().tolist():
        rows = torch.nonzero((out[b, 0] == 0).any(1)).flatten()
        cols = torch.nonzero((out[b, 0] == 0).any(0)).flatten()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(box) == int(erased[b])  # one solid rectangle
        assert 0.02 * 784 * 0.5 <= int(erased[b]) <= 784 / 3 * 1.2
    assert torch.equal(out[~chosen], x[~chosen])


def test_flip_and_epochs_are_seeded() -> None:
    pixels = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(40)
    spec = get_preset("jcc-fmnist-28-s8").input_spec()
    aug = Augmentation(crop_pad=2, flip=True, erase_prob=0.25)

    def epoch(n: int, seed: int = 0) -> list[torch.Tensor]:
        batches = InMemoryBatches(pixels, labels, spec, 16, aug, seed=seed)
        batches.set_epoch(n)
        return [t for x, y in batches for t in (x, y)]

    assert all(torch.equal(a, b) for a, b in zip(epoch(0), epoch(0)))  # a resumed run sees the same batches
    assert not torch.equal(epoch(0)[1], epoch(1)[1])  # epochs reshuffle
    assert len(epoch(0)) == 2 * 2  # 40 images, batch 16, drop_last: 2 batches


def test_ranks_split_an_epoch_without_overlap() -> None:
    pixels = torch.zeros(100, 1, 4, 4, dtype=torch.uint8)
    labels = torch.arange(100)
    spec = get_preset("jcc-fmnist-28-s8").input_spec()
    seen = [torch.cat([y for _, y in InMemoryBatches(pixels, labels, spec, 10, None, rank=r, world_size=2)])
            for r in range(2)]
    assert len(set(seen[0].tolist()) & set(seen[1].tolist())) == 0
    assert len(seen[0]) == len(seen[1]) == 50


def test_validation_split_is_fixed_disjoint_and_5k_for_fashion_mnist() -> None:
    fit, val = validation_indices(60_000)
    assert len(val) == 5000 and len(fit) == 55_000
    assert len(np.intersect1d(fit, val)) == 0
    again_fit, again_val = validation_indices(60_000)
    assert np.array_equal(val, again_val) and np.array_equal(fit, again_fit)
    small_fit, small_val = validation_indices(300)
    assert len(small_val) == 30 and len(small_fit) == 270


def test_fit_and_val_partition_the_training_split() -> None:
    config = get_preset("jcc-fmnist-28-s8")
    train, train_labels, _ = load_arrays("fashion-mnist", "train", config)
    fit, _, _ = load_arrays("fashion-mnist", "fit", config, limit=100)
    val, val_labels, _ = load_arrays("fashion-mnist", "val", config)
    fit_idx, val_idx = validation_indices(len(train))
    assert np.array_equal(val, train[val_idx]) and np.array_equal(val_labels, train_labels[val_idx])
    assert np.array_equal(fit, train[fit_idx[:100]])
    assert set(np.unique(val_labels)) == set(range(10))


def test_unknown_split_is_refused() -> None:
    with pytest.raises(DataError, match="unknown split"):
        load_arrays("synthetic", "validation", get_preset("jcc-fmnist-28-s8"))
    assert "val" in SPLITS and "fit" in SPLITS
