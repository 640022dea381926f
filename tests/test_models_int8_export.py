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


@pytest.fixture(scope="module")
def upgraded(packages, tmp_path_factory):
    from vitcodec.models.hs_upgrade import upgrade_hyper_synthesis

    return upgrade_hyper_synthesis(packages["fixed"], tmp_path_factory.mktemp("upgraded"), images(64, 0))


def test_upgrade_rewrites_only_the_h_s_and_the_model_id(packages, upgraded):
    old = packages["fixed"]
    new_codec, old_codec = LatentCodec.load(upgraded.file("codec")), LatentCodec.load(old.file("codec"))
    assert isinstance(new_codec.hyper, Int8HyperSynthesis)
    assert np.array_equal(new_codec.tables.y_cdf, old_codec.tables.y_cdf)
    for key in ("encoder", "weights"):
        assert upgraded.file(key).read_bytes() == old.file(key).read_bytes()
    assert upgraded.model_id != old.model_id
    assert upgraded.manifest["hs_upgrade"]["from_model_id"] == old.model_id.hex()
    assert "metrics" not in upgraded.manifest


def test_the_upgraded_h_s_agrees_with_an_int8_export_of_the_same_network(packages, upgraded):
    """Same network and calibration images: reading the float weights back from fixed point must quantise to
    (almost) what quantising the trained floats gives."""
    fresh = LatentCodec.load(packages["int8"].file("codec")).hyper
    ours = LatentCodec.load(upgraded.file("codec")).hyper
    symbols = np.random.default_rng(5).integers(-2, 3, (8, ours.in_channels, 2, 2))
    a, b = fresh.forward(fresh.fixed_input(symbols)), ours.forward(ours.fixed_input(symbols))
    assert np.mean(a.scale_indexes == b.scale_indexes) > 0.95
    assert np.abs(a.means - b.means).max() < 0.05 * np.abs(a.means).max()


def test_upgraded_streams_decode_bit_exactly_and_a_second_upgrade_is_refused(upgraded, tmp_path):
    from vitcodec.edge.encoder import EdgeEncoder
    from vitcodec.edge.preprocess import to_batch
    from vitcodec.models.hs_upgrade import upgrade_hyper_synthesis
    from vitcodec.models.inference import CloudModel

    edge, cloud = EdgeEncoder(upgraded), CloudModel(upgraded)
    for result in edge.encode_pixels(to_batch(images(8, 2), upgraded.input_spec)):
        assert np.array_equal(cloud.decode(result.stream).y_hat, result.y_hat)
    with pytest.raises(ValueError, match="already has h_s format 2"):
        upgrade_hyper_synthesis(upgraded, tmp_path, images(4, 0))
