"""The cheaper transport: the hot HTTP routes answered outside FastAPI must answer exactly as the FastAPI routes
do (which still serve the same paths with a query string), take only their own requests, and the server must
work on both event loops and both HTTP parsers."""

from __future__ import annotations

import base64
import gzip
import importlib.util
import json
import struct
from typing import Any

import grpc
import httpx
import pytest
from vitcodec.protos import grpc_service_pb2 as v2pb
from vitcodec.protos import grpc_service_pb2_grpc as v2grpc
from vitcodec.protos import vitcodec_pb2 as pb
from vitcodec.protos import vitcodec_pb2_grpc as pb_grpc


def _bytes_tensor(streams: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(s)) + s for s in streams)


def _binary(streams: list[bytes], **params: Any) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [len(streams)],
                                   "parameters": {"binary_data_size": len(_bytes_tensor(streams))}}],
                       "parameters": params}).encode()
    return head + _bytes_tensor(streams), {"Inference-Header-Content-Length": str(len(head))}


def _comparable(response: httpx.Response) -> tuple:
    """Status, content type and body, without the per-request timings of native answers."""
    body: Any = response.content
    if response.headers.get("content-type") == "application/json":
        body = response.json()
        if isinstance(body, dict):
            body.pop("timings_ms", None)
    return response.status_code, response.headers.get("content-type"), \
        response.headers.get("inference-header-content-length"), response.headers.get("www-authenticate"), body


def _cases(streams: list[bytes]) -> list[tuple[str, bytes, dict[str, str]]]:
    b64 = base64.b64encode(streams[0]).decode()
    json_one = json.dumps({"id": "a", "inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [1],
                                                  "data": [b64]}]}).encode()
    corrupt = bytearray(streams[0])
    corrupt[-1] ^= 0xFF
    v2 = "/v2/models/fmnist-q2/infer"
    return [
        (v2, json_one, {}),
        (v2, *_binary(streams[:3], binary_data_output=True)),
        (v2, *_binary(streams[:2])),
        ("/v2/models/fmnist-q2/versions/1/infer", json_one, {}),
        ("/v2/models/fmnist-q2/versions/7/infer", json_one, {}),
        ("/v2/models/nope/infer", json_one, {}),
        (v2, gzip.compress(json_one), {"Content-Encoding": "gzip"}),
        (v2, json_one, {"Content-Encoding": "br"}),
        (v2, b"{not json", {}),
        (v2, b"{}", {"Inference-Header-Content-Length": "99"}),
        (v2, *_binary([streams[0], bytes(corrupt)])),
        ("/v1/classify", streams[0], {}),
        ("/v1/classify", bytes(corrupt), {}),
        ("/v1/classify", b"", {}),
    ]


def test_hot_routes_answer_like_the_fastapi_routes(cloud_server, edge_streams):
    with httpx.Client(base_url=cloud_server.http_url, timeout=30) as http:
        for path, body, headers in _cases(edge_streams):
            hot = http.post(path, content=body, headers=headers)
            routed = http.post(path + "?via=fastapi", content=body, headers=headers)  # unknown query: FastAPI
            assert _comparable(hot) == _comparable(routed), (path, headers, hot.text, routed.text)


def test_hot_routes_keep_auth_like_the_fastapi_routes(auth_server, edge_streams):
    with httpx.Client(base_url=auth_server.http_url, timeout=30) as http:
        for path, body, headers in _cases(edge_streams)[:2] + _cases(edge_streams)[-3:-2]:
            for auth in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer s3cret"}):
                hot = http.post(path, content=body, headers={**headers, **auth})
                routed = http.post(path + "?via=fastapi", content=body, headers={**headers, **auth})
                assert _comparable(hot) == _comparable(routed), (path, auth, hot.text, routed.text)
                assert hot.status_code == (200 if auth.get("Authorization") == "Bearer s3cret" else 401)


def test_hot_routes_take_only_their_requests(cloud_server, edge_streams):
    """Driven at the ASGI level on the server's loop, with an inner app that records what reaches it."""
    from vitcodec.cloud.rest.fastpath import HotRoutes

    reached: list[str] = []

    async def inner(scope, receive, send):
        reached.append(f"{scope['method']} {scope['path']}?{scope['query_string'].decode()}")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    srv = cloud_server.server
    hot = HotRoutes(inner, srv.plane, srv.settings)
    body, headers = _binary(edge_streams[:1])

    async def call(method: str, path: str, query: bytes = b"", content: bytes = body) -> int:
        scope = {"type": "http", "method": method, "path": path, "query_string": query, "root_path": "",
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
        messages = [{"type": "http.request", "body": content, "more_body": False}]
        sent: list[dict] = []

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await hot(scope, receive, send)
        return sent[0]["status"]

    assert cloud_server.call(call("POST", "/v2/models/fmnist-q2/infer")) == 200
    assert cloud_server.call(call("POST", "/v2/models/fmnist-q2/versions/1/infer")) == 200
    assert cloud_server.call(call("POST", "/v1/classify", content=edge_streams[0])) == 200
    assert reached == []
    passed = [("POST", "/v2/models/fmnist-q2/infer", b"version=1"), ("GET", "/v2/models/fmnist-q2/infer", b""),
              ("POST", "/v2/models/fmnist-q2/infer/", b""), ("POST", "/v1/classify", b"top_k=3"),
              ("POST", "/v2/models/a/b/infer", b""), ("POST", "/v1/reconstruct", b"")]
    for method, path, query in passed:
        assert cloud_server.call(call(method, path, query)) == 204
    assert reached == [f"{m} {p}?{q.decode()}" for m, p, q in passed]


@pytest.mark.parametrize("event_loop, http_parser", [("asyncio", "h11"), ("auto", "auto")])
def test_both_transports_on_each_event_loop(start_server, edge_streams, event_loop, http_parser):
    srv = start_server(models=["fmnist-q2"], event_loop=event_loop, http_parser=http_parser)
    try:
        uvloop_installed = importlib.util.find_spec("uvloop") is not None
        expect_uvloop = event_loop == "auto" and uvloop_installed
        assert type(srv._loop).__module__.startswith("uvloop") == expect_uvloop
        with httpx.Client(base_url=srv.http_url, timeout=30) as http:
            body, headers = _binary(edge_streams[:2], binary_data_output=True)
            assert http.post("/v2/models/fmnist-q2/infer", content=body, headers=headers).status_code == 200
            assert http.post("/v1/classify", content=edge_streams[0]).json()["model"] == "fmnist-q2"
        with grpc.insecure_channel(srv.grpc_target) as channel:
            request = v2pb.ModelInferRequest(model_name="fmnist-q2")
            request.inputs.add(name="BITSTREAM", datatype="BYTES", shape=[1])
            request.raw_input_contents.append(_bytes_tensor(edge_streams[:1]))
            reply = v2grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
            assert [o.name for o in reply.outputs] == ["PROBABILITIES", "LABEL", "novelty"]  # the zoo is calibrated
            stub = pb_grpc.VitCodecStub(channel)
            answers = list(stub.ClassifyStream(iter([pb.ClassifyRequest(stream=s, id=str(i))
                                                     for i, s in enumerate(edge_streams[:6])]), timeout=30))
            assert sorted(a.id for a in answers) == [str(i) for i in range(6)]
            assert all(not a.HasField("error") and a.model == "fmnist-q2" for a in answers)
    finally:
        srv.stop()


def test_uvloop_asked_for_but_missing_is_a_clear_error(monkeypatch):
    from vitcodec.cloud import server

    monkeypatch.setattr(server.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="uvloop is not installed"):
        server.resolve_event_loop("uvloop")
    assert server.resolve_event_loop("auto") == "asyncio"
