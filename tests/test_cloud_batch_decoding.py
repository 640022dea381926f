"""Batched entropy decoding in the server: streams that arrive together are decoded in one batch, a stream
whose payload is corrupt (header and checksum valid) fails alone, and every other stream is answered."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
from vitcodec.cloud.decoding import decode_isolated
from vitcodec.codec.bitstream import pack_stream, unpack_stream
from vitcodec.codec.errors import CorruptPayloadError
from vitcodec.edge.client import ClientError, connect
from vitcodec.protos import grpc_service_pb2 as v2
from vitcodec.protos import grpc_service_pb2_grpc as v2_grpc


def _corrupt_payload(stream: bytes) -> bytes:
    """Valid header and checksum, but a y payload the range coder cannot decode (all ones: a point beyond every
    CDF row's total mass): only decoding finds it. (Bytes merely appended to a payload are no longer looked
    for in checksummed streams: `LatentCodec.decode_batch`'s ``checksum_verified``.)"""
    header, z, _ = unpack_stream(stream)
    return pack_stream(header, z, b"\xff" * 40)


@pytest.fixture(scope="module")
def batching_server(start_server):
    """A long queue delay, so that requests sent together are sure to meet in one batch."""
    return start_server(models=["fmnist-q2"], max_queue_delay_ms=400.0, max_batch_size=64)


@pytest.fixture(scope="module")
def single_answers(cloud_server, edge_streams) -> list[dict]:
    with httpx.Client(base_url=cloud_server.http_url, timeout=60) as http:
        return [http.post("/v1/classify", content=s, params={"top_k": 10}).json() for s in edge_streams[:12]]


def test_decode_isolated_fails_only_the_bad_payload(package, edge_streams):
    from vitcodec.models.inference import CloudModel

    model = CloudModel(package)
    parsed = [unpack_stream(s) for s in edge_streams[:6]]
    shape = parsed[0][0].latent_shape
    payloads = [(z, y) for _, z, y in parsed]
    bad = unpack_stream(_corrupt_payload(edge_streams[6]))
    whole = decode_isolated(model, payloads, shape)
    assert whole.rows == list(range(6)) and not whole.errors
    mixed = decode_isolated(model, payloads[:2] + [(bad[1], bad[2])] + payloads[2:], shape)
    assert mixed.rows == [0, 1, None, 2, 3, 4, 5]
    assert isinstance(mixed.errors[2], CorruptPayloadError)
    np.testing.assert_array_equal(mixed.y_hat, whole.y_hat)  # the good streams' ŷ, bit for bit
    alone = decode_isolated(model, [(bad[1], bad[2])], shape)
    assert alone.rows == [None] and isinstance(alone.errors[0], CorruptPayloadError)


def test_corrupt_stream_in_an_http_batch_fails_alone(batching_server, edge_streams, single_answers, scrape_metrics):
    streams = list(edge_streams[:12])
    bad_index = 5
    streams.insert(bad_index, _corrupt_payload(edge_streams[20]))
    with httpx.Client(base_url=batching_server.http_url, timeout=60) as http, ThreadPoolExecutor(len(streams)) as pool:
        before = http.get("/metrics").text
        replies = list(pool.map(lambda s: http.post("/v1/classify", content=s, params={"top_k": 10}), streams))
        after = http.get("/metrics").text
    bad = replies.pop(bad_index)
    assert bad.status_code == 400 and bad.json()["code"] == "INVALID_ARGUMENT"
    assert "range decoder failed" in bad.json()["error"]
    assert [r.status_code for r in replies] == [200] * 12
    bodies = [r.json() for r in replies]
    assert max(b["timings_ms"]["batch_size"] for b in bodies) > 1, "requests sent together were never batched"
    for body, alone in zip(bodies, single_answers):
        assert body["label"] == alone["label"]
        assert body["top_k"][0]["probability"] == pytest.approx(alone["top_k"][0]["probability"], abs=1e-5)
        assert set(body["timings_ms"]) >= {"decode", "queue", "inference", "batch_size", "total"}
    invalid = {"model": "fmnist-q2", "kind": "decode", "outcome": "invalid"}
    assert scrape_metrics(after, "vitcodec_streams_total", **invalid) - \
        scrape_metrics(before, "vitcodec_streams_total", **invalid) == 1


def test_corrupt_stream_in_a_grpc_batch_fails_alone(batching_server, edge_streams, single_answers):
    streams = list(edge_streams[:12])
    bad_index = 7
    streams.insert(bad_index, _corrupt_payload(edge_streams[21]))
    with connect(batching_server.grpc_url) as client:
        results = dict(client.classify_many(streams, concurrency=len(streams), top_k=10))
    bad = results.pop(bad_index)
    assert isinstance(bad, ClientError) and "range decoder failed" in str(bad)
    answered = [results[i] for i in sorted(results)]
    assert all(not isinstance(r, ClientError) for r in answered), answered
    assert max(r.timings_ms["batch_size"] for r in answered) > 1, "requests sent together were never batched"
    for result, alone in zip(answered, single_answers):
        assert result.label == alone["label"]


def test_v2_request_with_a_corrupt_stream_names_its_index_and_others_still_pass(batching_server, edge_streams):
    """A v2 request's streams join the batch one by one: a bad one fails its own request (with its index), a
    request sent alongside it is answered; over HTTP (JSON) and gRPC."""
    good = list(edge_streams[:4])
    mixed = good[:2] + [_corrupt_payload(edge_streams[22])] + good[2:]

    def http_body(streams: list[bytes]) -> dict:
        return {"inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [len(streams)],
                            "data": [base64.b64encode(s).decode() for s in streams]}]}

    def grpc_request(streams: list[bytes]) -> v2.ModelInferRequest:
        request = v2.ModelInferRequest(model_name="fmnist-q2")
        request.inputs.add(name="BITSTREAM", datatype="BYTES", shape=[len(streams)])
        request.inputs[0].contents.bytes_contents.extend(streams)
        return request

    url = f"{batching_server.http_url}/v2/models/fmnist-q2/infer"
    with httpx.Client(timeout=60) as http, grpc.insecure_channel(batching_server.grpc_target) as channel, \
            ThreadPoolExecutor(4) as pool:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        calls = [pool.submit(http.post, url, json=http_body(mixed)), pool.submit(http.post, url, json=http_body(good)),
                 pool.submit(stub.ModelInfer.future(grpc_request(mixed), timeout=60).exception),
                 pool.submit(stub.ModelInfer, grpc_request(good), timeout=60)]
        http_bad, http_good, grpc_bad, grpc_good = (c.result(timeout=120) for c in calls)
    assert http_bad.status_code == 400 and http_bad.json()["error"].startswith("BITSTREAM[2]: ")
    assert http_good.status_code == 200
    assert http_good.json()["outputs"][0]["shape"] == [4, 10]
    assert grpc_bad.code() == grpc.StatusCode.INVALID_ARGUMENT and grpc_bad.details().startswith("BITSTREAM[2]: ")
    assert list(grpc_good.outputs[0].shape) == [4, 10]


def test_corrupt_stream_in_a_reconstruction_batch_fails_alone(batching_server, edge_streams):
    streams = [edge_streams[0], _corrupt_payload(edge_streams[1]), edge_streams[2]]
    with httpx.Client(base_url=batching_server.http_url, timeout=60) as http, ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda s: http.post("/v1/reconstruct", content=s), streams))
        alone = http.post("/v1/reconstruct", content=edge_streams[0])
    assert [r.status_code for r in replies] == [200, 400, 200]
    assert replies[0].headers["content-type"] == "image/png" and replies[0].content == alone.content
    assert "range decoder failed" in replies[1].json()["error"]
