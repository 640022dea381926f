"""Pieces of the server that need no running server: the error table, settings, tensor layouts, the protos."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from vitcodec import wire
from vitcodec.cloud import errors
from vitcodec.cloud.settings import Settings
from vitcodec.cloud.tensors import deserialize_bytes, serialize_bytes
from vitcodec.codec import errors as codec_errors

ROOT = Path(__file__).resolve().parents[1]


def test_error_table_covers_every_domain_error_once_for_both_transports():
    codec_classes = [getattr(codec_errors, name) for name in codec_errors.__all__]
    serving_classes = [getattr(errors, name) for name in errors.__all__
                       if isinstance(getattr(errors, name), type) and issubclass(getattr(errors, name), Exception)
                       and name != "ServingError"]  # the abstract base is never raised
    for cls in codec_classes + serving_classes:
        assert errors.is_known(cls.__new__(cls)), cls
    # the HTTP status and the gRPC code always tell the same story
    for status, code in errors.ERROR_TABLE.values():
        assert wire.GRPC_FOR_HTTP[status] == code and wire.http_for_grpc(code.name) == status
    mismatch = codec_errors.ModelMismatchError(b"\x01\x02\x03\x04", b"\xaa\xbb\xcc\xdd")
    info = errors.describe(mismatch)
    assert (info.http_status, info.grpc_code) == (409, grpc.StatusCode.FAILED_PRECONDITION)
    assert "01020304" in info.message and "aabbccdd" in info.message
    info = errors.describe(codec_errors.IntegrityError("checksum mismatch: x"))
    assert (info.http_status, info.grpc_code, info.message) == (400, grpc.StatusCode.INVALID_ARGUMENT,
                                                                "checksum mismatch: x")
    assert errors.describe(errors.PayloadTooLarge("big")).http_status == 413
    assert errors.describe(errors.Unauthorized("no")).grpc_code == grpc.StatusCode.UNAUTHENTICATED
    bug = errors.describe(KeyError("secret internals"))
    assert bug.http_status == 500 and "secret" not in bug.message


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VITCODEC_MODEL_REPO", f"{tmp_path}/a:{tmp_path}/b")
    monkeypatch.setenv("VITCODEC_MODELS", "fmnist-q1, fmnist-q3")
    monkeypatch.setenv("VITCODEC_HTTP_PORT", "9000")
    monkeypatch.setenv("VITCODEC_AUTH_TOKEN", "t0k")
    monkeypatch.setenv("VITCODEC_MAX_QUEUE_DELAY_MS", "0.5")
    monkeypatch.setenv("VITCODEC_MAX_STREAMS_PER_REQUEST", "7")
    s = Settings(_env_file=None)
    assert (s.max_streams_per_request, s.max_queue_size) == (7, 4096)  # two limits, set apart
    assert s.model_repo == [tmp_path / "a", tmp_path / "b"]
    assert s.models == ["fmnist-q1", "fmnist-q3"]
    assert (s.http_port, s.grpc_port, s.max_queue_delay_ms) == (9000, 8001, 0.5)
    assert s.token == "t0k" and "t0k" not in repr(s)
    assert Settings(_env_file=None, http_port=1234).http_port == 1234  # explicit values win
    with pytest.raises(ValueError):
        Settings(_env_file=None, max_batch_size=0)


def test_bytes_tensor_layout_round_trips():
    elements = [b"", b"\xb1\x00", bytes(range(256)) * 3]
    blob = serialize_bytes(elements)
    assert blob[:4] == b"\x00\x00\x00\x00" and deserialize_bytes(blob) == elements
    with pytest.raises(errors.InvalidRequest):
        deserialize_bytes(blob[:-1])
    with pytest.raises(errors.InvalidRequest):
        deserialize_bytes(b"\x01\x00")


def test_generated_protos_are_reproducible(tmp_path):
    """`make protos` regenerates exactly the committed modules and their type stubs (protoc + fix_imports.py)."""
    pytest.importorskip("grpc_tools")
    work = tmp_path / "protos"
    work.mkdir()
    package = ROOT / "protos" / "src" / "vitcodec" / "protos"
    for proto in package.glob("*.proto"):
        shutil.copy(proto, work)
    protos = sorted(p.name for p in work.glob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{work}", f"--python_out={work}",
                    f"--pyi_out={work}", f"--grpc_python_out={work}", *protos], check=True, cwd=work, timeout=120)
    subprocess.run([sys.executable, str(ROOT / "protos" / "fix_imports.py"), str(work)], check=True, timeout=60)
    generated = sorted(p.name for p in work.glob("*_pb2*.py*"))
    assert generated == ["grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py",
                         "vitcodec_pb2.py", "vitcodec_pb2.pyi", "vitcodec_pb2_grpc.py"]
    _, mismatch, missing = filecmp.cmpfiles(work, package, generated, shallow=False)
    assert not mismatch and not missing, f"run `make protos`: {mismatch + missing} differ"


def test_v2_protos_coexist_with_tritonclient_and_match_its_wire_format():
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    from vitcodec.protos import grpc_service_pb2 as ours

    request = ours.ModelInferRequest(model_name="m", model_version="1", id="x")
    request.parameters["classification"].int64_param = 3
    tensor = request.inputs.add(name="BITSTREAM", datatype="BYTES", shape=[2])
    tensor.parameters["binary_data_size"].int64_param = 9
    request.outputs.add(name="LABEL")
    request.raw_input_contents.append(b"\x01\x00\x00\x00a")
    theirs = service_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.model_name == "m" and theirs.parameters["classification"].int64_param == 3
    assert theirs.inputs[0].shape == [2] and theirs.inputs[0].parameters["binary_data_size"].int64_param == 9
    assert theirs.outputs[0].name == "LABEL" and theirs.raw_input_contents == [b"\x01\x00\x00\x00a"]
    reply = service_pb2.ModelInferResponse(model_name="m")
    reply.outputs.add(name="PROBABILITIES", datatype="FP32", shape=[1, 2])
    reply.raw_output_contents.append(np.float32([0.25, 0.75]).tobytes())
    back = ours.ModelInferResponse.FromString(reply.SerializeToString())
    assert list(back.outputs[0].shape) == [1, 2] and back.raw_output_contents[0] == reply.raw_output_contents[0]


def test_intra_op_threads_leave_a_core_to_the_transports(monkeypatch) -> None:
    """Default: one fewer than the CPUs the process may use (at least 1); an explicit --threads wins."""
    import os

    from vitcodec.cloud.settings import Settings

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert Settings().intra_op_threads == 3
    assert Settings(torch_threads=2).intra_op_threads == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert Settings().intra_op_threads == 1


def test_the_hot_routes_do_not_import_the_app_they_sit_in_front_of():
    """app.py builds on fastpath.py; both answer errors through rest/errors.py, so no import goes back."""
    import ast

    tree = ast.parse((ROOT / "cloud" / "src" / "vitcodec" / "cloud" / "rest" / "fastpath.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "app" not in imported and "vitcodec.cloud.rest.app" not in imported
    assert "errors" in imported  # the shared error answer
