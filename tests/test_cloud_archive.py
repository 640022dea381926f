"""The archive (``--archive``): ids in every classify answer (REST native, gRPC native, KServe v2 over both), one
entry per distinct stream, listing with filters and cursors, metadata, reconstructions, deletion, the bearer
token on every new route, 404 without an archive, retention by age and size, failures that never fail a
classification, and ``vitcodec-cloud reclassify``.

The server and store tests run on both backends: a SQLite file and a real PostgreSQL server (the session's
throwaway cluster, tests/pg_cluster.py; a fresh database for each module or test). The faults (database down,
disk full, SIGKILL) are in test_cloud_archive_faults.py."""

from __future__ import annotations

import io
import json
import os
import struct
import time
from datetime import datetime, timedelta, timezone

import grpc
import httpx
import numpy as np
import pytest
from conftest import scrape
from PIL import Image
from typer.testing import CliRunner
from vitcodec.cloud.archive import (
    ArchiveRecord,
    ImageQuery,
    now_us,
    open_archive,
    stream_id,
)
from vitcodec.cloud.archive_sqlite import SqliteArchive
from vitcodec.cloud.cli import app as cloud_app
from vitcodec.cloud.metrics import Metrics
from vitcodec.edge.cli import app as edge_app
from vitcodec.edge.client import connect
from vitcodec.protos import grpc_service_pb2 as v2
from vitcodec.protos import grpc_service_pb2_grpc as v2_grpc
from vitcodec.protos import vitcodec_pb2 as pb
from vitcodec.protos import vitcodec_pb2_grpc as pb_grpc
from vitcodec.results import ClassScore

TOKEN = "archive-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GRPC_AUTH = (("authorization", f"Bearer {TOKEN}"),)
runner = CliRunner()


BACKENDS = ["sqlite", "postgresql"]


def _new_location(request, backend: str, folder) -> str:
    """A fresh, empty archive: a SQLite file in `folder`, or a new database on the test PostgreSQL server."""
    if backend == "postgresql":
        return request.getfixturevalue("postgres").new_database()
    return str(folder / "archive.db")


@pytest.fixture(scope="module", params=BACKENDS)
def archive_location(request, tmp_path_factory):
    return _new_location(request, request.param, tmp_path_factory.mktemp("archive"))


@pytest.fixture(params=BACKENDS)
def store_location(request, tmp_path):
    """For the store tests: a fresh archive on each backend."""
    return _new_location(request, request.param, tmp_path)


@pytest.fixture(scope="module")
def archive_server(start_server, archive_location):
    """fmnist-q1 and fmnist-q2 with an archive, behind a bearer token (so every new route is tested with it)."""
    return start_server(archive=archive_location, auth_token=TOKEN, models=["fmnist-q1", "fmnist-q2"])


@pytest.fixture(scope="module")
def http(archive_server):
    with httpx.Client(base_url=archive_server.http_url, timeout=30, headers=AUTH) as client:
        yield client


@pytest.fixture(scope="module")
def channel(archive_server):
    with grpc.insecure_channel(archive_server.grpc_target) as ch:
        yield ch


def _bytes_tensor(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _classify(http, stream: bytes) -> dict:
    response = http.post("/v1/classify", content=stream, headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    return response.json()


def _grpc_code(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30, metadata=GRPC_AUTH)
    details = info.value.details()
    assert details is not None, "the gRPC error carries no details"
    return info.value.code(), details


def test_every_classify_answer_carries_the_archive_id(http, channel, archive_server, edge_streams):
    stream = edge_streams[0]
    expected = stream_id(stream)
    body = _classify(http, stream)
    assert body["id"] == expected
    reply = pb_grpc.VitCodecStub(channel).Classify(pb.ClassifyRequest(stream=stream), timeout=30, metadata=GRPC_AUTH)
    assert reply.archive_id == expected
    # KServe v2, JSON over HTTP: an extra BYTES output, returned by default
    b64 = __import__("base64").b64encode
    infer = http.post("/v2/models/fmnist-q2/infer", json={"inputs": [{
        "name": "BITSTREAM", "datatype": "BYTES", "shape": [2], "data": [b64(s).decode() for s in edge_streams[:2]]}]})
    assert infer.status_code == 200, infer.text
    outputs = {o["name"]: o for o in infer.json()["outputs"]}
    assert outputs["archive_id"]["datatype"] == "BYTES" and outputs["archive_id"]["shape"] == [2]
    assert outputs["archive_id"]["data"] == [stream_id(s) for s in edge_streams[:2]]
    only = http.post("/v2/models/fmnist-q2/infer", json={
        "inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [1], "data": [b64(stream).decode()]}],
        "outputs": [{"name": "archive_id"}]}).json()
    assert [o["name"] for o in only["outputs"]] == ["archive_id"] and only["outputs"][0]["data"] == [expected]
    meta = http.get("/v2/models/fmnist-q2").json()
    # the zoo is calibrated
    assert [o["name"] for o in meta["outputs"]] == ["PROBABILITIES", "LABEL", "novelty", "archive_id"]
    # KServe v2 over gRPC
    request = v2.ModelInferRequest(model_name="fmnist-q2")
    request.inputs.add(name="BITSTREAM", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(_bytes_tensor(edge_streams[2:4]))
    reply = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30, metadata=GRPC_AUTH)
    names = [o.name for o in reply.outputs]
    assert names == ["PROBABILITIES", "LABEL", "novelty", "archive_id"]  # the zoo is calibrated
    raw = reply.raw_output_contents[names.index("archive_id")]
    assert raw == _bytes_tensor([stream_id(s).encode() for s in edge_streams[2:4]])
    # the edge clients
    for url in (archive_server.http_url, f"grpc://{archive_server.grpc_target}"):
        with connect(url, token=TOKEN) as client:
            result = client.classify(stream)
            assert result.archive_id == expected and result.as_dict()["archive_id"] == expected
    # readiness shows the archive's state
    assert http.get("/v2/health/ready").json() == {"ready": True, "archive": "ok"}


def test_the_same_stream_twice_is_one_entry(http, edge_streams):
    stream = edge_streams[5]
    first, second = _classify(http, stream), _classify(http, stream)
    assert first["id"] == second["id"] == stream_id(stream)
    entry = http.get(f"/v1/images/{first['id']}").json()
    assert entry["seen"] == 2 and entry["last_seen"] >= entry["created"]
    assert entry["label"] == first["label"] and entry["confidence"] == pytest.approx(first["confidence"], abs=1e-6)
    assert entry["model"] == "fmnist-q2" and entry["bytes"] == len(stream) and entry["image_size"] == [28, 28]
    assert entry["client"] is None and entry["reclassifications"] == []
    assert entry["novelty"] == pytest.approx(first["novelty"], rel=1e-5)  # the zoo is calibrated
    assert [t["label"] for t in entry["top_k"]][0] == first["label"] and len(entry["top_k"]) == 5
    listed = _all_pages(http, {"limit": 1000})
    assert [e["id"] for e in listed].count(first["id"]) == 1


def _all_pages(http, params: dict) -> list[dict]:
    images, cursor = [], None
    for _ in range(100):
        page = http.get("/v1/images", params={**params, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        body = page.json()
        images += body["images"]
        cursor = body["next_cursor"]
        if cursor is None:
            return images
    raise AssertionError("pagination does not end")


def test_list_filters_and_pagination(http, channel, edge_streams):
    before = datetime.now(timezone.utc)
    answers = [_classify(http, s) for s in edge_streams[8:20]]
    ids = {a["id"] for a in answers}
    pages = _all_pages(http, {"limit": 5, "since": before.isoformat()})
    assert {e["id"] for e in pages} == ids and len(pages) == len(ids)  # every entry once, across pages
    created = [e["created"] for e in pages]
    assert created == sorted(created, reverse=True)  # newest first
    assert _all_pages(http, {"limit": 1000, "since": before.isoformat()}) == pages
    label = answers[0]["label"]
    by_label = _all_pages(http, {"label": label, "since": before.isoformat()})
    assert by_label and {e["id"] for e in by_label} == {a["id"] for a in answers if a["label"] == label}
    threshold = sorted(a["confidence"] for a in answers)[len(answers) // 2]
    unsure = _all_pages(http, {"max_confidence": threshold, "limit": 3})
    assert unsure and all(e["confidence"] <= threshold for e in unsure)
    assert {a["id"] for a in answers if a["confidence"] <= threshold} <= {e["id"] for e in unsure}
    future = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    assert http.get("/v1/images", params={"since": future}).json() == {"images": [], "next_cursor": None}
    # the same over gRPC, cursor round trip included
    stub = pb_grpc.VitCodecStub(channel)
    seen, cursor = [], ""
    while True:
        reply = stub.ListImages(pb.ListImagesRequest(limit=4, since=before.isoformat(), cursor=cursor), timeout=30,
                                metadata=GRPC_AUTH)
        seen += [m.id for m in reply.images]
        cursor = reply.next_cursor
        if not cursor:
            break
    assert seen == [e["id"] for e in pages]
    reply = stub.ListImages(pb.ListImagesRequest(label=label, max_confidence=1.0, since=before.isoformat()),
                            timeout=30, metadata=GRPC_AUTH)
    assert {m.id for m in reply.images} == {e["id"] for e in by_label} and reply.images[0].top[0].label == label


def test_get_reconstruct_and_delete(http, channel, archive_server, edge_streams, tmp_path):
    stream = edge_streams[21]
    image_id = _classify(http, stream)["id"]
    png = http.get(f"/v1/images/{image_id}/reconstruction")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["x-vitcodec-cache"] == "miss" and png.headers["x-vitcodec-image-size"] == "28x28"
    assert Image.open(io.BytesIO(png.content)).size == (28, 28)
    direct = http.post("/v1/reconstruct", content=stream, headers={"Content-Type": "application/octet-stream"})
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))),
                          np.asarray(Image.open(io.BytesIO(direct.content))))  # the same reconstruct path
    again = http.get(f"/v1/images/{image_id}/reconstruction")
    assert again.headers["x-vitcodec-cache"] == "hit" and again.content == png.content
    stub = pb_grpc.VitCodecStub(channel)
    reply = stub.GetReconstruction(pb.GetReconstructionRequest(id=image_id), timeout=30, metadata=GRPC_AUTH)
    assert reply.png == png.content and (reply.height, reply.width) == (28, 28) and reply.id == image_id
    info = stub.GetImage(pb.GetImageRequest(id=image_id), timeout=30, metadata=GRPC_AUTH)
    assert info.id == image_id and info.model == "fmnist-q2" and info.num_bytes == len(stream)
    # the edge CLI, by id
    out = tmp_path / "out.png"
    result = runner.invoke(edge_app, ["reconstruct", "--id", image_id, "--server", archive_server.http_url,
                                      "--token", TOKEN, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == png.content
    assert runner.invoke(edge_app, ["reconstruct", "--server", archive_server.http_url, "-o", str(out)]).exit_code == 2
    # delete, then everything about it is 404
    deleted = http.delete(f"/v1/images/{image_id}")
    assert deleted.status_code == 200 and deleted.json() == {"deleted": image_id}
    for response in (http.get(f"/v1/images/{image_id}"), http.get(f"/v1/images/{image_id}/reconstruction"),
                     http.delete(f"/v1/images/{image_id}")):
        assert response.status_code == 404 and response.json()["code"] == "NOT_FOUND"
        assert image_id in response.json()["error"]
    assert _grpc_code(stub.GetImage, pb.GetImageRequest(id=image_id))[0] == grpc.StatusCode.NOT_FOUND
    assert _grpc_code(stub.DeleteImage, pb.DeleteImageRequest(id=image_id))[0] == grpc.StatusCode.NOT_FOUND
    # classified again, it comes back
    _classify(http, stream)
    assert stub.DeleteImage(pb.DeleteImageRequest(id=image_id), timeout=30, metadata=GRPC_AUTH).id == image_id
    assert http.get("/v1/images/not-an-id").status_code == 404


def test_malformed_cursor_and_filters_are_400(http, channel):
    for params in ({"cursor": "not-a-cursor"}, {"cursor": "djE6MTIzOnh5eg"}, {"since": "yesterday"},
                   {"max_confidence": "2"}, {"max_confidence": "high"}, {"limit": "0"}, {"limit": "100000"}):
        response = http.get("/v1/images", params=params)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["code"] == "INVALID_ARGUMENT"
    assert "cursor" in http.get("/v1/images", params={"cursor": "garbage"}).json()["error"]
    stub = pb_grpc.VitCodecStub(channel)
    for request in (pb.ListImagesRequest(cursor="garbage"), pb.ListImagesRequest(since="soon"),
                    pb.ListImagesRequest(max_confidence=1.5), pb.ListImagesRequest(limit=5000)):
        assert _grpc_code(stub.ListImages, request)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_token_applies_to_every_archive_route(archive_server, edge_streams):
    image_id = stream_id(edge_streams[0])
    with httpx.Client(base_url=archive_server.http_url, timeout=30) as anonymous:
        for method, path in (("GET", "/v1/images"), ("GET", f"/v1/images/{image_id}"),
                             ("GET", f"/v1/images/{image_id}/reconstruction"), ("DELETE", f"/v1/images/{image_id}")):
            response = anonymous.request(method, path)
            assert response.status_code == 401, (method, path)
    with grpc.insecure_channel(archive_server.grpc_target) as ch:
        stub = pb_grpc.VitCodecStub(ch)
        for call, request in ((stub.ListImages, pb.ListImagesRequest()),
                              (stub.GetImage, pb.GetImageRequest(id=image_id)),
                              (stub.GetReconstruction, pb.GetReconstructionRequest(id=image_id)),
                              (stub.DeleteImage, pb.DeleteImageRequest(id=image_id))):
            with pytest.raises(grpc.RpcError) as info:
                call(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_without_an_archive_the_routes_are_404(cloud_server, edge_streams):
    with httpx.Client(base_url=cloud_server.http_url, timeout=30) as http:
        for path in ("/v1/images", "/v1/images/abc", "/v1/images/abc/reconstruction"):
            response = http.get(path)
            assert response.status_code == 404 and "archive is not enabled" in response.json()["error"]
        assert http.delete("/v1/images/abc").status_code == 404
        body = http.post("/v1/classify", content=edge_streams[0],
                         headers={"Content-Type": "application/octet-stream"}).json()
        assert body["id"] is None
        refused = http.post("/v2/models/fmnist-q2/infer", json={
            "inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [1],
                        "data": [__import__("base64").b64encode(edge_streams[0]).decode()]}],
            "outputs": [{"name": "archive_id"}]})
        assert refused.status_code == 400 and "archive is not enabled" in refused.json()["error"]
        assert http.get("/v2/health/ready").json() == {"ready": True}
    with grpc.insecure_channel(cloud_server.grpc_target) as ch:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.VitCodecStub(ch).ListImages(pb.ListImagesRequest(), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "archive is not enabled" in (info.value.details() or "")
        reply = pb_grpc.VitCodecStub(ch).Classify(pb.ClassifyRequest(stream=edge_streams[0]), timeout=30)
        assert reply.archive_id == ""


# -- retention and failures -----------------------------------------------------------------------------------

def _record(i: int, created_us: int, size: int = 64) -> ArchiveRecord:
    stream = i.to_bytes(4, "little") + os.urandom(size - 4)
    return ArchiveRecord(stream_id(stream), stream, "m", "1", "ab", [ClassScore(0, "Bag", 0.9)], (28, 28),
                         created_us=created_us)


def test_retention_by_age(store_location):
    day = 86_400 * 1_000_000
    metrics = Metrics()
    store = open_archive(store_location, max_age_days=5, retention_interval_s=3600, metrics=metrics)
    store.start()
    try:
        old = [_record(i, now_us() - 10 * day + i) for i in range(5)]
        new = [_record(100 + i, now_us() - day + i) for i in range(3)]
        for record in old + new:
            store.add(record)
        assert store.sync()
        store.apply_retention()  # the writer's own pass (at start, then hourly here) may have come first
        assert scrape(metrics.exposition().decode(), "vitcodec_archive_retention_deleted_total", reason="age") == 5
        assert {e.id for e in store.list(ImageQuery()).images} == {r.id for r in new}
        assert store.get(old[0].id) is None and store.stream(new[0].id) == new[0].stream
    finally:
        store.close()


def test_retention_by_size_keeps_the_newest(store_location):
    limit = 256 * 1024
    metrics = Metrics()
    store = open_archive(store_location, max_bytes=limit, retention_interval_s=3600, metrics=metrics)
    store.start()
    try:
        start = now_us() - 1_000_000
        records = [_record(i, start + i, size=8192) for i in range(80)]  # ~ 650 KiB of streams
        for record in records:
            store.add(record)
        assert store.sync()
        store.apply_retention()
        text = metrics.exposition().decode()
        deleted = int(scrape(text, "vitcodec_archive_retention_deleted_total", reason="size"))
        assert 0 < deleted < len(records) and scrape(text, "vitcodec_archive_bytes") <= limit
        kept = [e.id for e in store.list(ImageQuery(limit=1000)).images]
        assert kept == [r.id for r in reversed(records[deleted:])]  # the oldest went first
        if isinstance(store, SqliteArchive):
            assert os.path.getsize(store.path) <= limit + 64 * 1024  # freed pages went back to the file system
    finally:
        store.close()


def test_an_unwritable_archive_never_fails_classification(start_server, tmp_path, edge_streams, scrape_metrics):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    server = start_server(archive=blocker / "archive.db", models=["fmnist-q2"])
    try:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            for stream in edge_streams[:3]:
                response = http.post("/v1/classify", content=stream,
                                     headers={"Content-Type": "application/octet-stream"})
                assert response.status_code == 200 and response.json()["id"] == stream_id(stream)
            deadline = time.monotonic() + 10
            while True:
                metrics = http.get("/metrics").text
                if scrape_metrics(metrics, "vitcodec_archive_failures_total", operation="write") >= 3:
                    break
                assert time.monotonic() < deadline, metrics
                time.sleep(0.05)
            assert scrape_metrics(metrics, "vitcodec_archive_up") == 0
            ready = http.get("/v2/health/ready")
            assert ready.status_code == 200
            assert ready.json()["ready"] is True and ready.json()["archive"] == "degraded"
            assert ready.json()["archive_error"]
            listing = http.get("/v1/images")
            assert listing.status_code == 503 and listing.json()["code"] == "UNAVAILABLE"
    finally:
        server.stop()


# -- reclassify -----------------------------------------------------------------------------------------------

def test_reclassify_with_the_same_model_changes_nothing_and_reports_other_model_ids(
        http, archive_location, model_repo, edge_streams, other_streams, other_package):
    for stream in edge_streams[24:30] + other_streams[:3]:
        _classify(http, stream)
    listed = _all_pages(http, {"limit": 1000})  # also waits for the queued writes
    ours = [e for e in listed if e["model"] == "fmnist-q2"]
    theirs = [e for e in listed if e["model"] == "fmnist-q1"]
    assert len(ours) >= 6 and len(theirs) >= 3
    result = runner.invoke(cloud_app, ["reclassify", "--archive", archive_location, "--model", "fmnist-q2",
                                       "--model-repo", str(model_repo), "--threads", "1"])
    assert result.exit_code == 0, result.output
    output = result.output
    assert f"reclassified {len(ours)} of {len(listed)} archived images with fmnist-q2" in output
    assert ": 0 changed label" in output
    q1_id = other_package.model_id.hex()
    assert f"skipped {len(theirs)} streams of another model id {q1_id} (fmnist-q1 v" in output
    assert "old label (rows)" in output  # the confusion table
    entry = http.get(f"/v1/images/{ours[0]['id']}").json()
    again = {r["model"]: r for r in entry["reclassifications"]}
    assert again["fmnist-q2"]["label"] == entry["label"] and len(again["fmnist-q2"]["top_k"]) == 5
    assert http.get(f"/v1/images/{theirs[0]['id']}").json()["reclassifications"] == []
    # --since in the future: nothing to do
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    result = runner.invoke(cloud_app, ["reclassify", "--archive", archive_location, "--model", "fmnist-q2",
                                       "--model-repo", str(model_repo), "--since", later])
    assert result.exit_code == 0 and "reclassified 0 of 0" in result.output
    bad = runner.invoke(cloud_app, ["reclassify", "--archive", archive_location, "--model", "fmnist-q2",
                                    "--model-repo", str(model_repo), "--since", "someday"])
    assert bad.exit_code == 2


def test_store_reads_without_a_writer_thread(store_location):
    """What the reclassify command does: no writer thread, reads and writes on the caller's thread."""
    store = open_archive(store_location)
    assert store.count() == 0 and list(store.iter_streams()) == []
    assert json.dumps(store.status().__dict__)
    store.close()


def test_the_archive_setting_names_the_backend(tmp_path):
    from pydantic import ValidationError
    from vitcodec.cloud.archive_postgres import PostgresArchive, redact
    from vitcodec.cloud.settings import Settings

    assert isinstance(open_archive(tmp_path / "x.db"), SqliteArchive)
    assert Settings(_env_file=None, archive=tmp_path / "x.db").archive == str(tmp_path / "x.db")
    url = "postgresql://vit:secret@db.example:5432/archive?sslmode=require"
    store = open_archive(Settings(_env_file=None, archive=url).archive)
    assert isinstance(store, PostgresArchive) and "secret" not in store.location  # nothing is connected yet
    assert redact(url) == "postgresql://vit:***@db.example:5432/archive?sslmode=require"
    with pytest.raises(ValidationError, match="postgresql:// URL"):
        Settings(_env_file=None, archive="mysql://db/archive")
    with pytest.raises(ValueError, match="not a valid PostgreSQL URL"):
        open_archive("postgresql://db/archive?no_such_option=1")


def test_a_filtered_listing_walks_a_bounded_stretch_per_page(store_location, monkeypatch):
    """A filter few entries match: each page walks at most SCAN_ROWS entries, so pages may hold fewer than
    `limit` (even none) with a cursor; following the cursors finds every match once, newest first."""
    from vitcodec.cloud import archive_sql

    monkeypatch.setattr(archive_sql, "SCAN_ROWS", 40)
    monkeypatch.setattr(archive_sql, "_FIRST_STRETCH", 10)
    store = open_archive(store_location)
    store.start()
    try:
        start = now_us() - 1_000_000
        records = []
        for i in range(200):
            stream = i.to_bytes(4, "little") + os.urandom(28)
            label, p = ("Bag", 0.3) if i % 90 == 0 else ("Coat", 0.9)
            records.append(ArchiveRecord(stream_id(stream), stream, "m", "1", "ab",
                                         [ClassScore(8 if label == "Bag" else 4, label, p)], (28, 28),
                                         created_us=start + i))
        for record in records:
            store.add(record)
        assert store.sync()
        expected = [r.id for r in reversed(records) if r.label == "Bag"]
        for query in ({"label": "Bag"}, {"max_confidence": 0.5}):
            found, sizes, cursor = [], [], None
            while True:
                page = store.list(ImageQuery.parse(limit=3, cursor=cursor, **query))
                found += [e.id for e in page.images]
                sizes.append(len(page.images))
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert found == expected and 0 in sizes and len(sizes) >= 200 // 40
        full = store.list(ImageQuery(label="Coat", limit=5))  # a common label fills its page at once
        assert len(full.images) == 5 and full.next_cursor is not None
    finally:
        store.close()
