"""The stock Triton clients (tritonclient.http and tritonclient.grpc) against the server's v2 endpoints."""

from __future__ import annotations

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

CLIENTS = {"http": httpclient, "grpc": grpcclient}


@pytest.fixture(scope="module", params=sorted(CLIENTS))
def triton(request, cloud_server):
    module = CLIENTS[request.param]
    url = cloud_server.http_url.removeprefix("http://") if request.param == "http" else cloud_server.grpc_target
    client = module.InferenceServerClient(url)
    yield module, client
    client.close()


def _inputs(module, streams):
    tensor = module.InferInput("BITSTREAM", [len(streams)], "BYTES")
    tensor.set_data_from_numpy(np.array(streams, dtype=np.object_))
    return [tensor]


def test_server_and_model_state(triton):
    module, client = triton
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fmnist-q2")
    meta = client.get_server_metadata()
    name = meta["name"] if isinstance(meta, dict) else meta.name
    assert name == "vitcodec"


def test_model_metadata_and_config(triton):
    module, client = triton
    if module is httpclient:
        meta = client.get_model_metadata("fmnist-q2")
        inputs = [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]]
        outputs = [o["name"] for o in meta["outputs"]]
        config = client.get_model_config("fmnist-q2")
    else:
        meta = client.get_model_metadata("fmnist-q2", as_json=True)
        inputs = [(i["name"], i["datatype"], [int(d) for d in i["shape"]]) for i in meta["inputs"]]
        outputs = [o["name"] for o in meta["outputs"]]
        config = client.get_model_config("fmnist-q2", as_json=True)["config"]
    assert inputs == [("BITSTREAM", "BYTES", [-1])]
    assert outputs == ["PROBABILITIES", "LABEL"]
    assert config["name"] == "fmnist-q2"


def test_infer_bytes_input(triton, edge_streams):
    module, client = triton
    result = client.infer("fmnist-q2", _inputs(module, edge_streams[:5]))
    probs = result.as_numpy("PROBABILITIES")
    labels = result.as_numpy("LABEL")
    assert probs.shape == (5, 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert labels.shape == (5,)
    assert all(label.decode() if isinstance(label, bytes) else label for label in labels)
    top = client.infer("fmnist-q2", _inputs(module, edge_streams[:2]),
                       outputs=[module.InferRequestedOutput("PROBABILITIES", class_count=2)])
    assert top.as_numpy("PROBABILITIES").shape == (2, 2)


def test_errors_surface_as_inference_server_exceptions(triton, edge_streams, other_streams):
    module, client = triton
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", _inputs(module, edge_streams[:1]))
    with pytest.raises(InferenceServerException, match="checksum mismatch"):
        client.infer("fmnist-q2", _inputs(module, [edge_streams[0][:-1]]))
    with pytest.raises(InferenceServerException, match="encoded for model id"):
        client.infer("fmnist-q2", _inputs(module, other_streams[:1]))
