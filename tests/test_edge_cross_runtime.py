"""Edge (ONNX Runtime encoder + codec) -> cloud (`CloudModel.decode`: torch side, numpy codec) gives the edge's
latents bit for bit: decode_failures = 0 over many real images, for the Fashion-MNIST preset and the paper's
224x224 preset on colour photos, with scale indexes spread over most of the 64-level table (random weights made
realistic by `workloads.make_realistic`; trained zoo models when the repository has them)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from vitcodec.codec.bitstream import read_stream_info
from vitcodec.edge.encoder import EdgeEncoder
from workloads import export_realistic, fashion_mnist_test, photo_crops, scale_levels

FMNIST_IMAGES = 300
REPOSITORY_IMAGES = 100  # `vitcodec eval` checks the zoo models on all 10k
MIN_LEVELS = 40  # of the scale table's 64 rows


def edge_to_cloud(package, pixels: np.ndarray) -> tuple[int, list]:
    """decode_failures (cloud ŷ != edge ŷ, one stream at a time as the server decodes) and the edge results."""
    from vitcodec.models.inference import CloudModel

    encoded = EdgeEncoder(package).encode_pixels(pixels)
    cloud = CloudModel(package)
    failures = sum(not np.array_equal(cloud.decode(r.stream).y_hat, r.y_hat) for r in encoded)
    return failures, encoded


@pytest.fixture(scope="module")
def fmnist_pixels() -> np.ndarray:
    images = fashion_mnist_test(FMNIST_IMAGES)
    if images is None:  # no Debian package: textured synthetic images still exercise every code path
        rng = np.random.default_rng(0)
        images = np.clip(rng.normal(90, 70, (FMNIST_IMAGES, 28, 28, 1)), 0, 255).astype(np.uint8)
    return images


@pytest.fixture(scope="module")
def realistic_fmnist(tmp_path_factory, fmnist_pixels):
    calibration = fmnist_pixels[::5][:48]
    return export_realistic("jcc-fmnist-28", tmp_path_factory.mktemp("realistic"), "fmnist-realistic",
                            calibration, seed=3)


@pytest.fixture(scope="module")
def paper_package(tmp_path_factory):
    pytest.importorskip("skimage")  # the colour photos ([dev] extra)
    return export_realistic("jcc-deit-s-224", tmp_path_factory.mktemp("paper"), "jcc-deit-s-224-realistic",
                            photo_crops(1, seed=99), seed=0)


def test_fashion_mnist_repository_model(package, fmnist_pixels):
    """The repository's fmnist-q2 (the trained zoo model when shipped, else an untrained export)."""
    failures, encoded = edge_to_cloud(package, fmnist_pixels[:REPOSITORY_IMAGES])
    assert failures == 0
    assert max(read_stream_info(r.stream).header_bytes for r in encoded) <= 13


def test_fashion_mnist_realistic_scales(realistic_fmnist, fmnist_pixels):
    levels = scale_levels(realistic_fmnist, fmnist_pixels)
    assert np.count_nonzero(levels) >= MIN_LEVELS, levels
    failures, _ = edge_to_cloud(realistic_fmnist, fmnist_pixels)
    assert failures == 0


def test_paper_preset_on_colour_photos(paper_package):
    pixels = photo_crops(3, seed=1)  # 8 photos x 3 crops, 224x224 RGB
    assert pixels.shape[1:] == (224, 224, 3) and len(pixels) >= 20
    levels = scale_levels(paper_package, pixels)
    assert np.count_nonzero(levels) >= MIN_LEVELS, levels
    assert levels[0] < 0.2 * levels.sum()  # not everything at the lower bound
    failures, encoded = edge_to_cloud(paper_package, pixels)
    assert failures == 0
    headers = {read_stream_info(r.stream).header_bytes for r in encoded}
    assert max(headers) <= 15, headers  # docs/bitstream.md: 15 bytes for a 224x224 image
