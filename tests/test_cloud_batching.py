"""Dynamic batching, readiness and graceful shutdown of a real server."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
from vitcodec.cloud.repository import ModelRepository
from vitcodec.edge.client import RetryPolicy, connect
from vitcodec.protos import grpc_service_pb2 as v2
from vitcodec.protos import grpc_service_pb2_grpc as v2_grpc


def _probs(body: dict) -> np.ndarray:
    out = np.zeros(10, np.float32)
    for item in body["top_k"]:
        out[item["index"]] = item["probability"]
    return out


def test_concurrent_requests_share_batches_and_match_single_answers(cloud_server, edge_streams, scrape_metrics):
    streams = edge_streams[:24]
    labels = {"model": "fmnist-q2", "kind": "classify"}
    with httpx.Client(base_url=cloud_server.http_url, timeout=60) as http:
        single = [http.post("/v1/classify", content=s, params={"top_k": 10}).json() for s in streams]
        before = http.get("/metrics").text

        def post(stream: bytes) -> dict:
            response = http.post("/v1/classify", content=stream, params={"top_k": 10})
            assert response.status_code == 200, response.text
            return response.json()

        with connect(cloud_server.grpc_url) as grpc_client, ThreadPoolExecutor(12) as pool:
            over_grpc = pool.submit(lambda: dict(grpc_client.classify_many(streams, concurrency=12, top_k=10)))
            together = list(pool.map(post, streams))
            grpc_results = over_grpc.result(timeout=120)
        after = http.get("/metrics").text

    batches = scrape_metrics(after, "vitcodec_batch_size_count", **labels) - \
        scrape_metrics(before, "vitcodec_batch_size_count", **labels)
    batches_of_one = scrape_metrics(after, "vitcodec_batch_size_bucket", le="1.0", **labels) - \
        scrape_metrics(before, "vitcodec_batch_size_bucket", le="1.0", **labels)
    items = scrape_metrics(after, "vitcodec_batch_size_sum", **labels) - \
        scrape_metrics(before, "vitcodec_batch_size_sum", **labels)
    assert items == 2 * len(streams)
    assert batches < items and batches_of_one < batches, "concurrent requests were never batched"
    assert max(r["timings_ms"]["batch_size"] for r in together) > 1
    for alone, batched in zip(single, together):
        assert batched["label"] == alone["label"]
        np.testing.assert_allclose(_probs(batched), _probs(alone), atol=1e-5)
    for i, alone in enumerate(single):
        assert grpc_results[i].label == alone["label"]
        assert grpc_results[i].confidence == pytest.approx(alone["confidence"], abs=1e-5)


def test_readiness_waits_for_models_and_shutdown_drains_in_flight(start_server, model_repo, edge_streams):
    gate = threading.Event()

    def gated_loader(package):  # the real loader, held until the test lets it go
        assert gate.wait(60)
        from vitcodec.models.inference import CloudModel

        return CloudModel(package, "cpu")

    repository = ModelRepository([model_repo], names=["fmnist-q2"], loader=gated_loader)
    server = start_server(repository=repository, wait_ready=False, max_queue_delay_ms=1000.0, max_batch_size=64)
    http = httpx.Client(base_url=server.http_url, timeout=60)
    channel = grpc.insecure_channel(server.grpc_target)
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    try:
        # live, not ready: probes and requests say so
        assert http.get("/v2/health/live").status_code == 200
        assert http.get("/v2/health/ready").status_code == 503
        assert http.get("/v2/health/ready").json() == {"ready": False}
        assert http.get("/v2/models/fmnist-q2/ready").status_code == 503
        assert not stub.ServerReady(v2.ServerReadyRequest(), timeout=10).ready
        loading = http.post("/v1/classify", content=edge_streams[0])
        assert loading.status_code == 503 and "still loading" in loading.json()["error"]
        assert http.get("/v2/models/fmnist-q2").status_code == 200  # metadata is there before the weights

        # the edge client treats 503 as transient: it retries with backoff and gets through once loaded
        patient = RetryPolicy(attempts=40, backoff_s=0.05, max_backoff_s=0.2)
        with ThreadPoolExecutor(1) as pool, connect(server.http_url, retry=patient) as client:
            waiting = pool.submit(client.classify, edge_streams[0])
            time.sleep(0.3)
            assert not waiting.done()
            gate.set()
            assert waiting.result(timeout=60).model == "fmnist-q2"
        server.call(server.server.wait_ready(60))
        assert http.get("/v2/health/ready").status_code == 200
        assert stub.ServerReady(v2.ServerReadyRequest(), timeout=10).ready

        # requests that sit in the batch queue (1 s delay) when shutdown starts still get their answers
        registry = server.server.metrics.registry
        with ThreadPoolExecutor(8) as pool, connect(server.grpc_url) as grpc_client:
            http_calls = [pool.submit(http.post, "/v1/classify", content=s) for s in edge_streams[:4]]
            grpc_calls = [pool.submit(grpc_client.classify, s) for s in edge_streams[4:8]]
            deadline = time.monotonic() + 30
            while registry.get_sample_value("vitcodec_queue_depth", {"model": "fmnist-q2", "kind": "classify"}) != 8:
                assert time.monotonic() < deadline, "requests never reached the queue"
                time.sleep(0.01)
            t0 = time.perf_counter()
            server.stop()
            assert time.perf_counter() - t0 < 10
            assert [f.result(timeout=30).status_code for f in http_calls] == [200] * 4
            assert all(f.result(timeout=30).model == "fmnist-q2" for f in grpc_calls)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.http_url}/v2/health/live", timeout=2)
    finally:
        gate.set()
        http.close()
        channel.close()
