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


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(37, 53), (11, 9)])  # resized down / centre-padded up to the model size
def test_training_input_equals_edge_input_for_odd_sizes(tmp_path: Path, channels: int, size: tuple[int, int]) -> None:
    """No train/serve skew: an image folder of odd-size colour and grey files gives the trainer exactly the
    tensor the edge encoder feeds ONNX Runtime (after the network's own zero-padding to the stride)."""
    from vitcodec.edge.preprocess import load_image, normalise, to_pixels
    from vitcodec.models.registry import create_model

    rng = np.random.default_rng(channels)
    files = []
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i, mode in enumerate(("RGB", "L")):
            pixels = rng.integers(0, 256, (*size, 3) if mode == "RGB" else size, dtype=np.uint8)
            path = tmp_path / label / f"{i}.png"
            Image.fromarray(pixels, mode).save(path)
            files.append(path)
    overrides = {} if channels == 1 else {"in_chans": 3, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
    config = get_preset("jcc-fmnist-28-s8").with_overrides(**overrides)
    train_x = build_dataset(f"imagefolder:{tmp_path}", "train", config).images
    spec = config.input_spec()
    edge_x = normalise(np.stack([to_pixels(load_image(p), spec) for p in files]), spec)
    net = create_model(config)
    assert train_x.shape == (4, channels, 28, 28) and edge_x.shape == (4, channels, 32, 32)
    assert np.array_equal(net.pad(train_x).numpy(), edge_x)
