"""Packages exported with the 8-bit h_s (h_s format 2, the default): a new model id, and streams from the
edge encoder decode on the server path to the encoder's very ŷ; packages of format 1 still decode."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("compressai")

from vitcodec.codec.int8_hyper_synthesis import Int8HyperSynthesis  # noqa: E402
from vitcodec.codec.integer_hyper_synthesis import IntegerHyperSynthesis  # noqa: E402
from vitcodec.codec.latent_codec import LatentCodec  # noqa: E402
from vitcodec.models import create_model  # noqa: E402


def images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 7, 7)).astype(np.uint8)
    return np.kron(base, np.ones((4, 4), np.uint8))  # 28x28 blocks: some structure for the encoder


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    import torch
    from vitcodec.models.export import export_package

    root = tmp_path_factory.mktemp("repo")
    out = {}
    for fmt in ("int8", "fixed"):
        torch.manual_seed(3)
        out[fmt] = export_package(create_model("jcc-fmnist-28-s8"), root, name=f"tiny-{fmt}", hs_format=fmt,
                                  calibration_images=images(64, 0) if fmt == "int8" else None)
    return out


def test_new_exports_use_the_8_bit_h_s_and_a_new_model_id(packages):
    new = LatentCodec.load(packages["int8"].file("codec"))
    old = LatentCodec.load(packages["fixed"].file("codec"))
    assert isinstance(new.hyper, Int8HyperSynthesis) and isinstance(old.hyper, IntegerHyperSynthesis)
    assert np.array_equal(new.tables.y_cdf, old.tables.y_cdf)  # same network, same tables
    assert packages["int8"].model_id != packages["fixed"].model_id


@pytest.mark.parametrize("fmt", ["int8", "fixed"])
def test_edge_streams_decode_on_the_server_path_bit_exactly(packages, fmt):
    from vitcodec.edge.encoder import EdgeEncoder
    from vitcodec.edge.preprocess import to_batch
    from vitcodec.models.inference import CloudModel

    package = packages[fmt]
    edge, cloud = EdgeEncoder(package), CloudModel(package)
    encoded = edge.encode_pixels(to_batch(images(12, 1), package.input_spec))
    for result in encoded:
        assert np.array_equal(cloud.decode(result.stream).y_hat, result.y_hat)


def test_export_refuses_an_unknown_h_s_format(tmp_path):
    from vitcodec.models.export import export_package

    with pytest.raises(ValueError, match="h_s format"):
        export_package(create_model("jcc-fmnist-28-s8"), tmp_path, name="bad", hs_format="int4")
