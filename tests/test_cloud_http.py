"""The HTTP API of a real server: KServe v2 (JSON and binary data), native /v1 routes, metrics, docs, and the
error table (400 / 409 / 404 / 413 / 401)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct

import httpx
import numpy as np
import pytest
from PIL import Image
from vitcodec.codec.bitstream import read_stream_info


@pytest.fixture(scope="module")
def http(cloud_server):
    with httpx.Client(base_url=cloud_server.http_url, timeout=30) as client:
        yield client


def _bytes_tensor(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _binary_infer(http, model, streams, outputs=None, params=None):
    head = {"inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [len(streams)],
                        "parameters": {"binary_data_size": len(_bytes_tensor(streams))}}]}
    if outputs is not None:
        head["outputs"] = outputs
    if params is not None:
        head["parameters"] = params
    header = json.dumps(head).encode()
    return http.post(f"/v2/models/{model}/infer", content=header + _bytes_tensor(streams),
                     headers={"Inference-Header-Content-Length": str(len(header)),
                              "Content-Type": "application/octet-stream"})


def _split_binary(response):
    size = int(response.headers["Inference-Header-Content-Length"])
    return json.loads(response.content[:size]), response.content[size:]


def test_health_and_metadata(http, package):
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    meta = http.get("/v2").json()
    assert meta["name"] == "vitcodec" and "binary_tensor_data" in meta["extensions"]
    model = http.get("/v2/models/fmnist-q2").json()
    assert model["name"] == "fmnist-q2" and model["versions"] == [str(package.version)]
    assert model["inputs"] == [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o["shape"] for o in model["outputs"]} == {"PROBABILITIES": [-1, 10], "LABEL": [-1],
                                                                 "novelty": [-1]}  # the zoo is calibrated
    assert http.get(f"/v2/models/fmnist-q2/versions/{package.version}").json() == model
    assert http.get("/v2/models/fmnist-q2/ready").status_code == 200
    assert http.get("/v2/models/fmnist-q2/config").json()["max_batch_size"] == 0
    index = http.post("/v2/repository/index", json={}).json()
    assert {"fmnist-q1", "fmnist-q2"} <= {m["name"] for m in index}


def test_v2_infer_json_and_binary_agree(http, edge_streams):
    streams = edge_streams[:3]
    body = {"id": "req-1", "inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [3],
                                       "data": [base64.b64encode(s).decode() for s in streams]}]}
    as_json = http.post("/v2/models/fmnist-q2/infer", json=body)
    assert as_json.status_code == 200, as_json.text
    result = as_json.json()
    assert result["id"] == "req-1" and result["model_name"] == "fmnist-q2"
    outputs = {o["name"]: o for o in result["outputs"]}
    probs = np.array(outputs["PROBABILITIES"]["data"], np.float32).reshape(outputs["PROBABILITIES"]["shape"])
    assert probs.shape == (3, 10) and np.allclose(probs.sum(1), 1, atol=1e-4)
    labels = outputs["LABEL"]["data"]

    binary = _binary_infer(http, "fmnist-q2", streams, params={"binary_data_output": True})
    assert binary.status_code == 200, binary.text
    head, blob = _split_binary(binary)
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert sum(sizes) == len(blob)
    probs_bin = np.frombuffer(blob[:sizes[0]], "<f4").reshape(3, 10)
    np.testing.assert_allclose(probs_bin, probs, atol=1e-5)
    label_blob, pos, labels_bin = blob[sizes[0]:sizes[0] + sizes[1]], 0, []  # then novelty (calibrated zoo)
    while pos < len(label_blob):
        (n,) = struct.unpack_from("<I", label_blob, pos)
        labels_bin.append(label_blob[pos + 4:pos + 4 + n].decode())
        pos += 4 + n
    assert labels_bin == labels


def test_v2_classification_extension_and_output_selection(http, edge_streams):
    outputs = [{"name": "PROBABILITIES", "parameters": {"classification": 3, "binary_data": False}}]
    response = _binary_infer(http, "fmnist-q2", edge_streams[:2], outputs=outputs)
    assert response.status_code == 200, response.text
    (out,) = response.json()["outputs"]
    assert out["shape"] == [2, 3] and out["datatype"] == "BYTES"
    score, index, label = out["data"][0].split(":", 2)
    assert 0 <= float(score) <= 1 and 0 <= int(index) < 10 and label


def test_v2_gzip_request(http, edge_streams):
    body = json.dumps({"inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [1],
                                   "data": [base64.b64encode(edge_streams[0]).decode()]}]}).encode()
    response = http.post("/v2/models/fmnist-q2/infer", content=gzip.compress(body),
                         headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert response.status_code == 200, response.text


def test_native_classify(http, edge_streams):
    stream = edge_streams[0]
    response = http.post("/v1/classify", content=stream, params={"top_k": 3},
                         headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    body = response.json()
    info = read_stream_info(stream)
    assert body["model"] == "fmnist-q2" and body["model_id"] == info.header.model_id.hex()
    assert body["bytes"] == len(stream) and body["header_bytes"] == info.header_bytes
    assert body["bpp"] == pytest.approx(8 * len(stream) / (28 * 28))
    assert len(body["top_k"]) == 3 and body["label"] == body["top_k"][0]["label"]
    assert {"decode", "queue", "inference", "total"} <= set(body["timings_ms"])


def test_native_routes_by_model_id(http, other_streams):
    body = http.post("/v1/classify", content=other_streams[0]).json()
    assert body["model"] == "fmnist-q1"


def test_native_reconstruct_is_png_of_original_size(http, edge_streams):
    response = http.post("/v1/reconstruct", content=edge_streams[1])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.verify()
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (28, 28) and image.mode == "L"


def test_models_listing_and_docs(http, package):
    models = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
    assert models["fmnist-q2"]["ready"] and models["fmnist-q2"]["model_id"] == package.model_id.hex()
    assert models["fmnist-q2"]["default"] and models["fmnist-q2"]["input_size"] == list(package.input_spec.size)
    spec = http.get("/openapi.json").json()
    for path in ("/v2/models/{name}/infer", "/v1/classify", "/v1/reconstruct", "/v1/models", "/metrics"):
        assert path in spec["paths"]
    assert "InferRequestBody" in spec["components"]["schemas"]
    assert "application/octet-stream" in spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert http.get("/docs").status_code == 200


def test_metrics_exposition(http, edge_streams, scrape_metrics):
    http.post("/v1/classify", content=edge_streams[2])
    text = http.get("/metrics").text
    assert scrape_metrics(text, "vitcodec_requests_total", protocol="http", endpoint="POST /v1/classify") >= 1
    assert scrape_metrics(text, "vitcodec_batch_size_count", kind="classify") >= 1
    assert scrape_metrics(text, "vitcodec_queue_duration_seconds_count") >= 1
    assert scrape_metrics(text, "vitcodec_request_bytes_total", protocol="http") > 0
    assert scrape_metrics(text, "vitcodec_model_ready", model="fmnist-q2") == 1


# -- errors ---------------------------------------------------------------------------------------------

def _error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    return body["error"]


def test_corrupted_stream_is_400_with_codec_message(http, edge_streams):
    stream = bytearray(edge_streams[0])
    stream[len(stream) // 2] ^= 0x40
    message = _error(http.post("/v1/classify", content=bytes(stream)), 400, "INVALID_ARGUMENT")
    assert "checksum mismatch" in message


def test_truncated_and_foreign_bytes_are_400(http, edge_streams):
    assert "smallest vitcodec stream" in _error(http.post("/v1/classify", content=edge_streams[0][:5]), 400,
                                                "INVALID_ARGUMENT")
    assert "not a vitcodec stream" in _error(http.post("/v1/classify", content=b"\x89PNG\r\n\x1a\n" + b"0" * 40),
                                             400, "INVALID_ARGUMENT")
    assert "empty stream" in _error(http.post("/v1/classify", content=b""), 400, "INVALID_ARGUMENT")
    v2 = _binary_infer(http, "fmnist-q2", [edge_streams[0][:-4]])
    assert "checksum mismatch" in _error(v2, 400, "INVALID_ARGUMENT")


def test_stream_for_another_model_names_both_ids(http, other_streams, package, other_package):
    for response in (http.post("/v1/classify", content=other_streams[0], params={"model": "fmnist-q2"}),
                     _binary_infer(http, "fmnist-q2", other_streams[:1])):
        message = _error(response, 409, "FAILED_PRECONDITION")
        assert package.model_id.hex() in message and other_package.model_id.hex() in message


def test_unknown_model_is_404(http, edge_streams):
    assert "unknown model 'nope'" in _error(http.get("/v2/models/nope"), 404, "NOT_FOUND")
    assert "fmnist-q2" in _error(_binary_infer(http, "nope", edge_streams[:1]), 404, "NOT_FOUND")
    _error(http.get("/v2/models/fmnist-q2/versions/99"), 404, "NOT_FOUND")
    unknown_id = bytearray(edge_streams[0])
    from vitcodec.codec.bitstream import StreamHeader, pack_stream, unpack_stream

    header, z, y = unpack_stream(bytes(unknown_id))
    forged_header = StreamHeader(b"\x00\x01\x02\x03", header.quality, header.image_size, header.latent_shape)
    forged = pack_stream(forged_header, z, y)
    assert "00010203" in _error(http.post("/v1/classify", content=forged), 404, "NOT_FOUND")


def test_body_over_limit_is_413(http):
    big = b"\xb1" + bytes(70 * 1024)
    _error(http.post("/v1/classify", content=big), 413, "RESOURCE_EXHAUSTED")
    _error(http.post("/v2/models/fmnist-q2/infer", content=big), 413, "RESOURCE_EXHAUSTED")


def test_malformed_v2_requests_are_400(http, edge_streams):
    b64 = base64.b64encode(edge_streams[0]).decode()
    cases = [
        {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": [b64]}]},
        {"inputs": [{"name": "BITSTREAM", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
        {"inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [2], "data": [b64]}]},
        {"inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]},
        {"inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [1], "data": [b64]}],
         "outputs": [{"name": "NOPE"}]},
        {"inputs": "nonsense"},
    ]
    for body in cases:
        _error(http.post("/v2/models/fmnist-q2/infer", json=body), 400, "INVALID_ARGUMENT")
    _error(http.post("/v2/models/fmnist-q2/infer", content=b"{not json"), 400, "INVALID_ARGUMENT")
    bad_len = http.post("/v2/models/fmnist-q2/infer", content=b"{}", headers={"Inference-Header-Content-Length": "99"})
    _error(bad_len, 400, "INVALID_ARGUMENT")


def test_auth_token_required_on_http(auth_server, edge_streams):
    with httpx.Client(base_url=auth_server.http_url, timeout=30) as client:
        assert client.get("/v2/health/ready").status_code == 200  # probes stay open
        missing = client.post("/v1/classify", content=edge_streams[0])
        assert "missing bearer token" in _error(missing, 401, "UNAUTHENTICATED")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = client.post("/v1/classify", content=edge_streams[0], headers={"Authorization": "Bearer nope"})
        assert "invalid bearer token" in _error(wrong, 401, "UNAUTHENTICATED")
        _error(client.get("/v2/models/fmnist-q2"), 401, "UNAUTHENTICATED")
        _error(client.get("/metrics"), 401, "UNAUTHENTICATED")
        ok = client.post("/v1/classify", content=edge_streams[0], headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200, ok.text


def test_keep_alive_responses_are_not_held_back(http):
    """Responses leave in two writes (headers, body): without TCP_NODELAY each waited ~40 ms for a delayed ACK."""
    import statistics
    import time

    latencies = []
    for _ in range(10):
        t0 = time.perf_counter()
        assert http.get("/v2/health/live").status_code == 200
        latencies.append(time.perf_counter() - t0)
    assert statistics.median(latencies) < 0.030


def test_body_limit_applies_to_every_route_and_chunked_bodies(http):
    _error(http.post("/v2/repository/index", content=b"{" + b" " * (70 * 1024) + b"}"), 413, "RESOURCE_EXHAUSTED")

    def chunks():
        for _ in range(80):
            yield b"\xb1" * 1024

    _error(http.post("/v1/classify", content=chunks()), 413, "RESOURCE_EXHAUSTED")  # no Content-Length


def test_other_image_sizes_within_the_token_limit(http, package, fmnist_images):
    from vitcodec.edge.encoder import EdgeEncoder

    encoder = EdgeEncoder(package)
    base = fmnist_images[0][0]
    for size in [(20, 24), (56, 56)]:
        pixels = np.ascontiguousarray(np.resize(base, (*size, 1)))
        stream = encoder.encode_pixels(pixels[None])[0].stream
        body = http.post("/v1/classify", content=stream).json()
        assert body["image_size"] == list(size)
        png = http.post("/v1/reconstruct", content=stream)
        assert Image.open(io.BytesIO(png.content)).size == (size[1], size[0])
    big = encoder.encode_pixels(np.zeros((1, 120, 120, 1), np.uint8))[0].stream
    assert "accepts at most" in _error(http.post("/v1/classify", content=big), 400, "INVALID_ARGUMENT")
