"""Novelty end to end: a calibrated package served by a real server gives each image a novelty score (above
1.0: unlike the training data) in every API (REST native, KServe v2 over HTTP and gRPC, the native gRPC
service), the edge clients and `vitcodec-edge send` carry it into `ClassifyResult` and the JSON rows, and the
demo's report names the flagged images. An uncalibrated package has no novelty anywhere, and asking v2 for it
is a 400. The torch and ONNX Runtime backends agree on it.

The bundled samples are the test images: 16 Fashion-MNIST test images (in distribution) and 4 colour drawings.
Every API must report the novelty the package itself computes for the same stream; of the drawings, the
shipped fmnist-q2 flags the trousers (which it calls "Pullover"), not the bag and T-shirt it labels correctly
(docs/models.md has the figures)."""

from __future__ import annotations

import base64
import json
import math
import struct
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from typer.testing import CliRunner
from vitcodec.demo import report as demo_report
from vitcodec.edge import images
from vitcodec.edge.cli import app
from vitcodec.edge.client import connect
from vitcodec.protos import grpc_service_pb2 as v2pb
from vitcodec.protos import grpc_service_pb2_grpc as v2grpc
from vitcodec.protos import vitcodec_pb2 as pb
from vitcodec.protos import vitcodec_pb2_grpc as pb_grpc
from vitcodec.results import ClassifyResult, ClassScore

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def _is_colour(name: str) -> bool:
    return name.startswith("colour-")


@pytest.fixture(scope="module")
def calibrated_package(calibrated_repo):
    from vitcodec.packages import resolve_model

    return resolve_model("fmnist-q2", roots=[calibrated_repo])


@pytest.fixture(scope="module")
def calibrated_server(start_server, calibrated_repo):
    server = start_server(model_repo=[calibrated_repo])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def samples(calibrated_package) -> list[tuple[str, bytes]]:
    """(file name, bitstream) of every bundled sample, encoded on the edge for fmnist-q2."""
    files = [s.path for s in demo_report.read_samples(SAMPLES)]
    encoder = images.load_encoder(str(calibrated_package.path), None)
    items = list(images.encode_batches(encoder, [Path(f) for f in files]))
    assert all(item.error is None for item in items)
    pairs = [(Path(f).name, item.result.stream) for f, item in zip(files, items)]
    from vitcodec.models.inference import CloudModel

    _, _, novelty = CloudModel(calibrated_package).analyse_streams([stream for _, stream in pairs])
    _REFERENCE.update({name: float(n) for (name, _), n in zip(pairs, novelty)})
    return pairs


_REFERENCE: dict[str, float] = {}  # novelty of each sample computed in-process by the package (samples fixture)
FLAGGED_DRAWING = "colour-trousers.png"  # the drawing the shipped fmnist-q2 calls "Pullover": flagged


def _check_flags(names: list[str], novelty: list[float | None]) -> None:
    """Finite scores equal to the package's own; the trousers drawing flagged; most Fashion-MNIST samples not."""
    assert all(n is not None and math.isfinite(n) and n >= 0 for n in novelty), novelty
    for name, n in zip(names, novelty):
        assert n == pytest.approx(_REFERENCE[name], rel=1e-4), (name, n, _REFERENCE[name])
    flagged = {name for name, n in zip(names, novelty) if n is not None and n > 1.0}
    assert FLAGGED_DRAWING in flagged, dict(zip(names, novelty))
    colour = {name for name in names if _is_colour(name)}
    in_distribution = len(names) - len(colour)
    assert len(flagged - colour) <= in_distribution // 4, dict(zip(names, novelty))


def _bytes_tensor(streams: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(s)) + s for s in streams)


def _v2_json(streams: list[bytes], outputs: list[dict] | None = None) -> dict:
    body: dict = {"inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [len(streams)],
                              "data": [base64.b64encode(s).decode() for s in streams]}]}
    if outputs is not None:
        body["outputs"] = outputs
    return body


# -- the result type ------------------------------------------------------------------------------------

def test_result_novelty_and_json_row():
    def result(novelty):
        return ClassifyResult("m", "1", "ab", [ClassScore(3, "Dress", 0.9)], 40, 20, (28, 28), novelty=novelty)

    assert result(None).out_of_distribution is None
    assert result(0.4).out_of_distribution is False and result(1.0).out_of_distribution is False
    assert result(2.5).out_of_distribution is True
    row = result(2.5).as_dict()
    assert row["novelty"] == 2.5 and row["out_of_distribution"] is True
    row = result(None).as_dict()
    assert "novelty" in row and row["novelty"] is None and row["out_of_distribution"] is None
    json.dumps(row)


# -- REST native and KServe v2 over HTTP ------------------------------------------------------------------

def test_rest_native_classify_carries_novelty(calibrated_server, uncalibrated_server, samples):
    names = [name for name, _ in samples]
    with httpx.Client(base_url=calibrated_server.http_url, timeout=60) as http:
        bodies = [http.post("/v1/classify", content=stream).json() for _, stream in samples]
        via_fastapi = http.post("/v1/classify?top_k=5", content=samples[-1][1]).json()
    _check_flags(names, [b["novelty"] for b in bodies])
    assert all(b["out_of_distribution"] == (b["novelty"] > 1.0) for b in bodies)
    # FastAPI route, same answer (rel: batch composition changes float sums)
    assert via_fastapi["novelty"] == pytest.approx(bodies[-1]["novelty"], rel=1e-4)
    assert via_fastapi["out_of_distribution"] is (bodies[-1]["novelty"] > 1.0)
    with httpx.Client(base_url=uncalibrated_server.http_url, timeout=60) as http:
        body = http.post("/v1/classify", content=samples[0][1]).json()
    assert "novelty" in body and body["novelty"] is None and body["out_of_distribution"] is None


def test_rest_schema_documents_novelty(calibrated_server):
    with httpx.Client(base_url=calibrated_server.http_url, timeout=30) as http:
        schema = http.get("/openapi.json").json()["components"]["schemas"]["ClassifyResponse"]
    assert {"novelty", "out_of_distribution"} <= set(schema["properties"])
    assert "1.0" in schema["properties"]["novelty"]["description"]


def test_v2_http_novelty_output(calibrated_server, samples):
    names = [name for name, _ in samples]
    streams = [stream for _, stream in samples]
    with httpx.Client(base_url=calibrated_server.http_url, timeout=60) as http:
        meta = http.get("/v2/models/fmnist-q2").json()
        config = http.get("/v2/models/fmnist-q2/config").json()
        default = http.post("/v2/models/fmnist-q2/infer", json=_v2_json(streams)).json()
        only = http.post("/v2/models/fmnist-q2/infer", json=_v2_json(streams[:3], [{"name": "novelty"}])).json()
        head = json.dumps({"inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [2],
                                       "parameters": {"binary_data_size": len(_bytes_tensor(streams[-2:]))}}],
                           "outputs": [{"name": "LABEL"}, {"name": "novelty", "parameters": {"binary_data": True}}]})
        binary = http.post("/v2/models/fmnist-q2/infer", content=head.encode() + _bytes_tensor(streams[-2:]),
                           headers={"Inference-Header-Content-Length": str(len(head))})
        native = [http.post("/v1/classify", content=s).json()["novelty"] for s in streams[-2:]]
    assert {"name": "novelty", "datatype": "FP32", "shape": [-1]} in meta["outputs"]
    assert {"name": "novelty", "data_type": "TYPE_FP32", "dims": [-1]} in config["output"]
    outputs = {o["name"]: o for o in default["outputs"]}
    assert list(outputs) == ["PROBABILITIES", "LABEL", "novelty"]
    novelty = outputs["novelty"]
    assert novelty["datatype"] == "FP32" and novelty["shape"] == [len(streams)]
    _check_flags(names, novelty["data"])
    assert [o["name"] for o in only["outputs"]] == ["novelty"]
    # rel: batch composition changes float sums
    assert only["outputs"][0]["data"] == pytest.approx(novelty["data"][:3], rel=1e-4)
    assert binary.status_code == 200, binary.text
    size = int(binary.headers["Inference-Header-Content-Length"])
    answer, blob = json.loads(binary.content[:size]), binary.content[size:]
    assert [o["name"] for o in answer["outputs"]] == ["LABEL", "novelty"]
    assert answer["outputs"][1]["parameters"]["binary_data_size"] == 8 == len(blob)
    np.testing.assert_allclose(np.frombuffer(blob, "<f4"), native, rtol=1e-5)  # float32 sums per batch


def test_v2_http_uncalibrated_has_no_novelty(uncalibrated_server, samples):
    stream = samples[0][1]
    with httpx.Client(base_url=uncalibrated_server.http_url, timeout=60) as http:
        meta = http.get("/v2/models/fmnist-q2").json()
        default = http.post("/v2/models/fmnist-q2/infer", json=_v2_json([stream])).json()
        asked = http.post("/v2/models/fmnist-q2/infer", json=_v2_json([stream], [{"name": "novelty"}]))
        asked_fastapi = http.post("/v2/models/fmnist-q2/infer?via=fastapi",
                                  json=_v2_json([stream], [{"name": "novelty"}]))
    assert [o["name"] for o in meta["outputs"]] == ["PROBABILITIES", "LABEL"]
    assert [o["name"] for o in default["outputs"]] == ["PROBABILITIES", "LABEL"]
    assert asked.status_code == 400 and asked.json()["code"] == "INVALID_ARGUMENT"
    message = asked.json()["error"]
    assert "not calibrated" in message and "'PROBABILITIES'" in message and "'LABEL'" in message, message
    assert (asked_fastapi.status_code, asked_fastapi.json()) == (400, asked.json())


def test_hot_routes_answer_like_fastapi_for_a_calibrated_model(calibrated_server, samples):
    streams = [stream for _, stream in samples[-3:]]
    cases = [("/v1/classify", streams[0], {}),
             ("/v2/models/fmnist-q2/infer", json.dumps(_v2_json(streams)).encode(), {}),
             ("/v2/models/fmnist-q2/infer", json.dumps(_v2_json(streams, [{"name": "novelty"}])).encode(), {})]
    with httpx.Client(base_url=calibrated_server.http_url, timeout=60) as http:
        for path, body, headers in cases:
            hot, routed = http.post(path, content=body, headers=headers), \
                http.post(path + "?via=fastapi", content=body, headers=headers)
            assert hot.status_code == routed.status_code == 200
            a, b = hot.json(), routed.json()
            a.pop("timings_ms", None)
            b.pop("timings_ms", None)
            assert a == b, (path, a, b)


# -- gRPC ---------------------------------------------------------------------------------------------------

def test_grpc_native_and_v2_novelty(calibrated_server, uncalibrated_server, samples):
    names = [name for name, _ in samples]
    with grpc.insecure_channel(calibrated_server.grpc_target) as channel:
        stub = pb_grpc.VitCodecStub(channel)
        replies = [stub.Classify(pb.ClassifyRequest(stream=s), timeout=30) for _, s in samples]
        streamed = list(stub.ClassifyStream(iter([pb.ClassifyRequest(stream=s, id=str(i))
                                                  for i, (_, s) in enumerate(samples)]), timeout=60))
        v2 = v2grpc.GRPCInferenceServiceStub(channel)
        meta = v2.ModelMetadata(v2pb.ModelMetadataRequest(name="fmnist-q2"), timeout=30)
        request = v2pb.ModelInferRequest(model_name="fmnist-q2")
        request.inputs.add(name="BITSTREAM", datatype="BYTES", shape=[len(samples)])
        request.raw_input_contents.append(_bytes_tensor([s for _, s in samples]))
        inferred = v2.ModelInfer(request, timeout=60)
    assert all(r.HasField("novelty") for r in replies + streamed)
    novelty = [r.novelty for r in replies]
    _check_flags(names, novelty)
    by_id = {int(r.id): r.novelty for r in streamed}
    # rel: batch composition changes float sums
    assert [by_id[i] for i in range(len(samples))] == pytest.approx(novelty, rel=1e-4)
    assert [(o.name, o.datatype, list(o.shape)) for o in meta.outputs][-1] == ("novelty", "FP32", [-1])
    assert [o.name for o in inferred.outputs] == ["PROBABILITIES", "LABEL", "novelty"]
    assert list(inferred.outputs[2].shape) == [len(samples)]
    np.testing.assert_allclose(np.frombuffer(inferred.raw_output_contents[2], "<f4"), novelty, rtol=1e-5)

    with grpc.insecure_channel(uncalibrated_server.grpc_target) as channel:
        reply = pb_grpc.VitCodecStub(channel).Classify(pb.ClassifyRequest(stream=samples[0][1]), timeout=30)
        request = v2pb.ModelInferRequest(model_name="fmnist-q2")
        request.inputs.add(name="BITSTREAM", datatype="BYTES", shape=[1])
        request.raw_input_contents.append(_bytes_tensor([samples[0][1]]))
        request.outputs.add(name="novelty")
        with pytest.raises(grpc.RpcError) as info:
            v2grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert not reply.HasField("novelty")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not calibrated" in (info.value.details() or "")


# -- the edge: clients, `send`, the demo's report -------------------------------------------------------------

@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_edge_clients_fill_novelty(transport, calibrated_server, uncalibrated_server, samples):
    names = [name for name, _ in samples]
    url = calibrated_server.http_url if transport == "http" else calibrated_server.grpc_url
    with connect(url) as client:
        single = client.classify(samples[-1][1])
        many = dict(client.classify_many([s for _, s in samples], concurrency=4))
    assert single.novelty is not None and single.out_of_distribution is (_REFERENCE[samples[-1][0]] > 1.0)
    _check_flags(names, [many[i].novelty for i in range(len(samples))])
    # rel: batch composition changes float sums
    assert many[len(samples) - 1].novelty == pytest.approx(single.novelty, rel=1e-4)
    assert many[len(samples) - 1].as_dict()["out_of_distribution"] is (_REFERENCE[samples[-1][0]] > 1.0)
    url = uncalibrated_server.http_url if transport == "http" else uncalibrated_server.grpc_url
    with connect(url) as client:
        plain = client.classify(samples[0][1])
    assert plain.novelty is None and plain.out_of_distribution is None


def test_send_rows_table_and_demo_report(calibrated_server, uncalibrated_server, calibrated_package):
    runner = CliRunner()
    result = runner.invoke(app, ["send", str(SAMPLES), "--server", calibrated_server.grpc_url, "--model",
                                 str(calibrated_package.path), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    names = [Path(r["file"]).name for r in rows]
    _check_flags(names, [r["novelty"] for r in rows])
    assert all(r["out_of_distribution"] == (r["novelty"] > 1.0) for r in rows)

    samples = demo_report.read_samples(SAMPLES)
    sizes = {x.name: (1, 1) for x in samples}
    summary = demo_report.summarise(samples, {"gRPC": rows}, sizes)
    assert sorted(summary.other_flagged) == sorted(n for n in names if _is_colour(n) and _REFERENCE[n] > 1.0)
    text = "\n".join(demo_report.summary_lines(summary))
    flagged_drawings = sum(1 for n in names if _is_colour(n) and _REFERENCE[n] > 1.0)
    assert f"colour drawings flagged as unlike the training data (novelty > 1.0): {flagged_drawings}/4" in text, text
    assert "Fashion-MNIST samples flagged as unlike the training data" in text
    table = demo_report.results_table(samples, {"gRPC": rows})
    assert "novelty" in [c.header for c in table.columns]

    colour = str(SAMPLES / FLAGGED_DRAWING)
    result = runner.invoke(app, ["send", colour, "--server", calibrated_server.http_url, "--model",
                                 str(calibrated_package.path)])
    assert result.exit_code == 0, result.output
    assert "(unfamiliar)" in result.stdout and "novelty" in result.stdout
    result = runner.invoke(app, ["send", colour, "--server", calibrated_server.http_url, "--model",
                                 str(calibrated_package.path), "--csv"])
    assert result.stdout.splitlines()[0].endswith("model,novelty,out_of_distribution,error")
    assert ",True," in result.stdout.splitlines()[1]

    # an uncalibrated model: no novelty anywhere, and the report says nothing about it
    result = runner.invoke(app, ["send", colour, "--server", uncalibrated_server.http_url, "--json"])
    assert result.exit_code == 0, result.output
    plain = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert plain[0]["novelty"] is None and plain[0]["out_of_distribution"] is None
    summary = demo_report.summarise(samples, {"gRPC": plain}, sizes)
    assert summary.novelty_scored == 0
    assert not any("unlike the training data" in line for line in demo_report.summary_lines(summary))
    assert "novelty" not in [c.header for c in demo_report.results_table(samples, {"gRPC": plain}).columns]
    result = runner.invoke(app, ["send", colour, "--server", uncalibrated_server.http_url])
    assert "(unfamiliar)" not in result.stdout and "novelty" not in result.stdout


# -- backends -----------------------------------------------------------------------------------------------

def test_torch_and_onnxruntime_backends_agree_on_novelty(calibrated_server, start_server, calibrated_repo,
                                                         samples):
    ort_server = start_server(model_repo=[calibrated_repo], backend="onnxruntime")
    try:
        answers = []
        for server in (calibrated_server, ort_server):
            with httpx.Client(base_url=server.http_url, timeout=60) as http:
                body = http.post("/v2/models/fmnist-q2/infer", json=_v2_json([s for _, s in samples])).json()
            answers.append({o["name"]: np.asarray(o["data"], np.float64) for o in body["outputs"]
                            if o["datatype"] == "FP32"})
    finally:
        ort_server.stop()
    torch_answer, ort_answer = answers
    np.testing.assert_allclose(ort_answer["novelty"], torch_answer["novelty"], rtol=1e-4)
    np.testing.assert_allclose(ort_answer["PROBABILITIES"], torch_answer["PROBABILITIES"], atol=1e-5)


def test_cloud_decode_prints_novelty(calibrated_package, samples, tmp_path):
    """`vitcodec-cloud decode` (the local decoder) reports the same flag as the server for a calibrated package."""
    from vitcodec.cloud.cli import app as cloud_app

    for name, stream in samples:
        if name not in (FLAGGED_DRAWING, "fmnist-00000.png"):
            continue
        path = tmp_path / f"{name}.vcb"
        path.write_bytes(stream)
        result = CliRunner().invoke(cloud_app, ["decode", str(path), "--model", str(calibrated_package.path), "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["out_of_distribution"] is _is_colour(name) and math.isfinite(report["novelty"])
        text = CliRunner().invoke(cloud_app, ["decode", str(path), "--model", str(calibrated_package.path)]).stdout
        assert ("unlike the training data" in text) is _is_colour(name)
