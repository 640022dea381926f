"""Datasets: the Fashion-MNIST reader on the real Debian files, image folders, synthetic data."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitcodec.models.data import DataError, build_dataset, load_fashion_mnist, read_idx
from vitcodec.models.registry import get_preset


def test_fashion_mnist_reader_on_a_real_slice() -> None:
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    # the first test image is an ankle boot (label 9), as in the dataset's documentation
    assert labels[0] == 9
    assert 50 < images[:100].mean() < 110


def test_missing_dataset_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITCODEC_FMNIST_DIR", str(tmp_path))
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train")


def test_truncated_idx_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    path.write_bytes(gzip.compress(header + bytes(100)))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_fmnist_32_preset_pads_centred() -> None:
    ds = build_dataset("fashion-mnist", "test", get_preset("jcc-fmnist-32"), limit=4)
    x, _ = ds[0]
    assert x.shape == (1, 32, 32)
    assert np.allclose(x[:, :2].numpy(), x[0, 0, 0].item())  # padding rows are constant (zero pixels)


def test_imagefolder(tmp_path: Path) -> None:
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(tmp_path / label / f"{i}.png")
    ds = build_dataset(f"imagefolder:{tmp_path}", "train", get_preset("jcc-fmnist-28"))
    assert len(ds) == 6 and ds.label_names == ("cat", "dog")
    assert ds[0][0].shape == (1, 28, 28)


def test_synthetic_is_deterministic() -> None:
    cfg = get_preset("jcc-fmnist-28")
    a = build_dataset("synthetic", "train", cfg, limit=8, seed=3)
    b = build_dataset("synthetic", "train", cfg, limit=8, seed=3)
    assert np.array_equal(a.images.numpy(), b.images.numpy())


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="imagefolder"):
        build_dataset("mnist", "train", get_preset("jcc-fmnist-28"))
