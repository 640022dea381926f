"""The gRPC API of a real server: v2 service with its own stubs, the native streaming service, health checking,
reflection, and the same error table as HTTP (INVALID_ARGUMENT / FAILED_PRECONDITION / NOT_FOUND /
RESOURCE_EXHAUSTED / UNAUTHENTICATED)."""

from __future__ import annotations

import io
import struct

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from vitcodec.protos import grpc_service_pb2 as v2
from vitcodec.protos import grpc_service_pb2_grpc as v2_grpc
from vitcodec.protos import vitcodec_pb2 as pb
from vitcodec.protos import vitcodec_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def channel(cloud_server):
    with grpc.insecure_channel(cloud_server.grpc_target) as ch:
        yield ch


def _bytes_tensor(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _infer_request(model: str, streams: list[bytes]) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=model, id="r1")
    request.inputs.add(name="BITSTREAM", datatype="BYTES", shape=[len(streams)])
    request.raw_input_contents.append(_bytes_tensor(streams))
    return request


def _code(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=30, **kwargs)
    details = info.value.details()
    assert details is not None, "the gRPC error carries no details"
    return info.value.code(), details


def test_v2_health_and_metadata(channel):
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(v2.ServerLiveRequest()).live
    assert stub.ServerReady(v2.ServerReadyRequest()).ready
    assert stub.ModelReady(v2.ModelReadyRequest(name="fmnist-q2")).ready
    meta = stub.ModelMetadata(v2.ModelMetadataRequest(name="fmnist-q2"))
    assert meta.inputs[0].name == "BITSTREAM" and meta.inputs[0].datatype == "BYTES"
    assert [o.name for o in meta.outputs] == ["PROBABILITIES", "LABEL", "novelty"]  # the zoo is calibrated
    assert "binary_tensor_data" in stub.ServerMetadata(v2.ServerMetadataRequest()).extensions
    config = stub.ModelConfig(v2.ModelConfigRequest(name="fmnist-q2")).config
    assert config.input[0].data_type == v2.TYPE_STRING
    names = {m.name for m in stub.RepositoryIndex(v2.RepositoryIndexRequest()).models}
    assert {"fmnist-q1", "fmnist-q2"} <= names


def test_v2_infer_raw_and_typed_contents(channel, edge_streams):
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    reply = stub.ModelInfer(_infer_request("fmnist-q2", edge_streams[:4]), timeout=30)
    assert reply.model_name == "fmnist-q2" and reply.id == "r1"
    assert [o.name for o in reply.outputs] == ["PROBABILITIES", "LABEL", "novelty"]  # the zoo is calibrated
    probs = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(list(reply.outputs[0].shape))
    assert probs.shape == (4, 10) and np.allclose(probs.sum(1), 1, atol=1e-4)
    typed = v2.ModelInferRequest(model_name="fmnist-q2")
    tensor = typed.inputs.add(name="BITSTREAM", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(edge_streams[0])
    reply1 = stub.ModelInfer(typed, timeout=30)
    np.testing.assert_allclose(np.frombuffer(reply1.raw_output_contents[0], "<f4"), probs[0], atol=1e-5)


def test_v2_stream_infer_reports_errors_in_band(channel, edge_streams):
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    requests = [_infer_request("fmnist-q2", [s]) for s in edge_streams[:3]]
    requests.append(_infer_request("fmnist-q2", [edge_streams[0][:-2]]))
    replies = list(stub.ModelStreamInfer(iter(requests), timeout=30))
    assert len(replies) == 4
    assert sum(1 for r in replies if r.error_message) == 1
    assert any("checksum" in r.error_message for r in replies)


def test_native_classify_and_stream(channel, edge_streams, other_streams):
    stub = pb_grpc.VitCodecStub(channel)
    single = stub.Classify(pb.ClassifyRequest(stream=edge_streams[0], top_k=3, id="a"), timeout=30)
    assert single.id == "a" and single.model == "fmnist-q2" and len(single.top) == 3
    assert single.num_bytes == len(edge_streams[0]) and single.height == 28 and single.width == 28
    batch = list(edge_streams[:8]) + [b"garbage bytes that are no stream", other_streams[0]]
    replies = list(stub.ClassifyStream(iter(pb.ClassifyRequest(stream=s, id=str(i)) for i, s in enumerate(batch)),
                                       timeout=60))
    assert sorted(int(r.id) for r in replies) == list(range(len(batch)))
    by_id = {int(r.id): r for r in replies}
    assert by_id[8].error.code == "INVALID_ARGUMENT" and by_id[8].error.http_status == 400
    assert by_id[9].model == "fmnist-q1" and not by_id[9].HasField("error")
    assert by_id[0].top[0].label == single.top[0].label


def test_native_reconstruct_and_models(channel, edge_streams, package):
    stub = pb_grpc.VitCodecStub(channel)
    reply = stub.Reconstruct(pb.ReconstructRequest(stream=edge_streams[0]), timeout=30)
    assert (reply.height, reply.width) == (28, 28)
    assert Image.open(io.BytesIO(reply.png)).size == (28, 28)
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=30).models}
    assert models["fmnist-q2"].ready and models["fmnist-q2"].model_id == package.model_id.hex()


def test_health_checking_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    service = health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"))
    assert service.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(reflection.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="vitcodec.v1.VitCodec"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
    ]), timeout=30))
    services = {s.name for s in replies[0].list_services_response.service}
    assert {"inference.GRPCInferenceService", "vitcodec.v1.VitCodec", "grpc.health.v1.Health"} <= services
    assert replies[1].file_descriptor_response.file_descriptor_proto
    assert replies[2].file_descriptor_response.file_descriptor_proto


def test_error_codes_match_the_http_table(channel, edge_streams, other_streams, package, other_package):
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    native = pb_grpc.VitCodecStub(channel)
    code, message = _code(stub.ModelInfer, _infer_request("fmnist-q2", [edge_streams[0][:-1] + b"\x00"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "checksum mismatch" in message
    code, message = _code(stub.ModelInfer, _infer_request("fmnist-q2", other_streams[:1]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert package.model_id.hex() in message and other_package.model_id.hex() in message
    code, message = _code(stub.ModelInfer, _infer_request("nope", edge_streams[:1]))
    assert code == grpc.StatusCode.NOT_FOUND and "unknown model 'nope'" in message
    code, _ = _code(stub.ModelMetadata, v2.ModelMetadataRequest(name="nope"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, message = _code(native.Classify, pb.ClassifyRequest(stream=b"\xb1\x00"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "smallest vitcodec stream" in message
    code, _ = _code(native.Classify, pb.ClassifyRequest(stream=b"\xb1" + bytes(70 * 1024)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    bad = v2.ModelInferRequest(model_name="fmnist-q2")
    bad.inputs.add(name="IMAGE", datatype="BYTES", shape=[1])
    bad.raw_input_contents.append(_bytes_tensor(edge_streams[:1]))
    code, message = _code(stub.ModelInfer, bad)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "BITSTREAM" in message


def test_auth_token_required_on_grpc(auth_server, edge_streams):
    token = auth_server.server.settings.token
    with grpc.insecure_channel(auth_server.grpc_target) as ch:
        stub = v2_grpc.GRPCInferenceServiceStub(ch)
        native = pb_grpc.VitCodecStub(ch)
        assert stub.ServerReady(v2.ServerReadyRequest(), timeout=30).ready  # probes stay open
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        code, message = _code(native.Classify, pb.ClassifyRequest(stream=edge_streams[0]))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "missing bearer token" in message
        code, _ = _code(stub.ModelInfer, _infer_request("fmnist-q2", edge_streams[:1]),
                        metadata=(("authorization", "Bearer wrong"),))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = _code(lambda req, **kw: list(native.ClassifyStream(iter([req]), **kw)),
                        pb.ClassifyRequest(stream=edge_streams[0]))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        ok = native.Classify(pb.ClassifyRequest(stream=edge_streams[0]), timeout=30,
                             metadata=(("authorization", f"Bearer {token}"),))
        assert ok.model == "fmnist-q2"


def test_grpc_calls_are_counted_with_their_status(cloud_server, channel, edge_streams, scrape_metrics):
    import httpx

    native = pb_grpc.VitCodecStub(channel)
    native.Classify(pb.ClassifyRequest(stream=edge_streams[0]), timeout=30)
    _code(native.Classify, pb.ClassifyRequest(stream=b"nope"))
    text = httpx.get(f"{cloud_server.http_url}/metrics", timeout=30).text
    endpoint = "/vitcodec.v1.VitCodec/Classify"
    assert scrape_metrics(text, "vitcodec_requests_total", protocol="grpc", endpoint=endpoint, code="OK") >= 1
    assert scrape_metrics(text, "vitcodec_request_errors_total", protocol="grpc", endpoint=endpoint,
                          code="INVALID_ARGUMENT") >= 1
    assert scrape_metrics(text, "vitcodec_request_bytes_total", protocol="grpc") > 0
