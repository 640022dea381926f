"""The server's backends are peers behind one interface: each loaded model is a `ServedModel`, decodes the same
ŷ bit for bit, and gives the torch networks' probabilities and reconstructions."""

from __future__ import annotations

import numpy as np
import pytest
from vitcodec.cloud.backends import BACKENDS, make_loader
from vitcodec.cloud.served_model import ServedModel
from vitcodec.codec.bitstream import unpack_stream


@pytest.fixture(scope="module")
def reference(package):
    from vitcodec.models.inference import CloudModel

    return CloudModel(package)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_serves_the_same_model(backend, package, reference, edge_streams):
    model = make_loader(backend, "cpu", 1)(package)
    assert isinstance(model, ServedModel)
    parsed = [unpack_stream(s) for s in edge_streams[:8]]
    header = parsed[0][0]
    payloads = [(z, y) for _, z, y in parsed]
    y_hat = model.decode_payloads(payloads, header.latent_shape)
    np.testing.assert_array_equal(y_hat, reference.decode_payloads(payloads, header.latent_shape))
    probs, novelty = model.analyse_latents(y_hat)
    expected_probs, expected_novelty = reference.analyse_latents(y_hat)
    # int8 linear layers move probabilities by ~1e-3 (their accuracy: benchmarks/bench_classifier.py)
    np.testing.assert_allclose(probs, expected_probs, atol=0.03 if backend.endswith("int8") else 1e-5)
    assert (novelty is None) == (expected_novelty is None)
    np.testing.assert_array_equal(model.classify_latents(y_hat), probs)
    assert model.labels == reference.labels and probs.shape == (8, len(model.labels))
    images = model.reconstruct_latents(y_hat[:2], header.image_size)
    assert images.dtype == np.uint8 and images.shape[:3] == (2, *header.image_size)


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        make_loader("tensorrt")
