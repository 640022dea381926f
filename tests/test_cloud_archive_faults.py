"""The archive's faults (issue 19): the database goes down mid-run, the disk fills up, the server is killed.

- PostgreSQL stopped under a serving server (a cluster of this module's own, so the shared one stays up):
  classification keeps answering with ids, the lost entries are counted in /metrics, logged once, readiness
  says degraded, the archive's routes answer 503; started again, writes resume, reads reconnect, and what was
  stored before is all there.
- SQLite on a full disk: a real server process whose file-size limit (RLIMIT_FSIZE, set from outside with
  prlimit) stops the write-ahead log from growing mid-frame, the short write a full disk gives; then the
  limit is lifted, as when space is freed.
- SIGKILL: a server process with a 1 s batch window, killed while answering; every entry answered before the
  last window (plus the time of one commit) is in the archive, on both backends.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import time
from pathlib import Path

import httpx
import pytest
from agent_processes import child_env
from vitcodec.cloud import process
from vitcodec.cloud.archive import ImageQuery, open_archive, stream_id

pytestmark = pytest.mark.slow


def _classify(http: httpx.Client, stream: bytes) -> str:
    response = http.post("/v1/classify", content=stream, headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    image_id = response.json()["id"]
    assert image_id == stream_id(stream)
    return image_id


def _listed(http: httpx.Client) -> set[str]:
    ids, cursor = set(), None
    while True:
        page = http.get("/v1/images", params={"limit": 1000, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        ids |= {e["id"] for e in page.json()["images"]}
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return ids


def _wait(condition, what: str, timeout: float = 30.0, diagnostics=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{diagnostics()}"
        time.sleep(0.05)


def _archive_state(http: httpx.Client) -> str:
    """Readiness and the archive's series of /metrics, for a failure's message."""
    lines = [line for line in http.get("/metrics").text.splitlines() if line.startswith("vitcodec_archive_")]
    return f"{http.get('/v2/health/ready').text}\n" + "\n".join(lines)


def _archive_errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "vitcodec.cloud.archive" and r.levelno >= logging.ERROR]


# -- PostgreSQL down ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_cluster():
    """A PostgreSQL server of this module's own: the test stops it."""
    from pg_cluster import cluster_or_skip

    cluster = cluster_or_skip()
    yield cluster
    cluster.destroy()


def test_database_down_classification_goes_on_and_writes_resume(start_server, own_cluster, edge_streams,
                                                                 scrape_metrics, caplog):
    caplog.set_level(logging.ERROR, logger="vitcodec.cloud.archive")
    server = start_server(archive=own_cluster.new_database(), models=["fmnist-q2"])
    try:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            before = {_classify(http, s) for s in edge_streams[:5]}
            assert _listed(http) == before
            assert http.get("/v2/health/ready").json() == {"ready": True, "archive": "ok"}

            own_cluster.stop("fast")  # every session ends: the writer's and the readers' connections break
            try:
                during = {_classify(http, s) for s in edge_streams[5:10]}  # answered, with ids, all the same

                def lost() -> float:
                    return scrape_metrics(http.get("/metrics").text, "vitcodec_archive_failures_total",
                                          operation="write")

                _wait(lambda: lost() >= len(during), "the lost entries in /metrics",
                      diagnostics=lambda: _archive_state(http))
                metrics = http.get("/metrics").text
                assert scrape_metrics(metrics, "vitcodec_archive_up") == 0
                ready = http.get("/v2/health/ready")
                assert ready.status_code == 200 and ready.json()["ready"] is True
                assert ready.json()["archive"] == "degraded" and ready.json()["archive_error"]
                listing = http.get("/v1/images")
                assert listing.status_code == 503 and listing.json()["code"] == "UNAVAILABLE"
                assert len(_archive_errors(caplog)) == 1  # several batches failed, one message (once a minute)
            finally:
                own_cluster.start()

            after = {_classify(http, s) for s in edge_streams[10:13]}  # the next batch connects again
            _wait(lambda: http.get("/v2/health/ready").json().get("archive") == "ok", "the archive to recover",
                  diagnostics=lambda: _archive_state(http))
            stored = _listed(http)  # the readers' broken connections are replaced
            assert before <= stored and after <= stored  # nothing stored before is lost; writes resumed
            assert not (during - before) & stored  # the batches of the outage were dropped (and counted)
            assert scrape_metrics(http.get("/metrics").text, "vitcodec_archive_up") == 1
            entry = http.get(f"/v1/images/{next(iter(before))}")
            assert entry.status_code == 200 and entry.json()["seen"] == 1
    finally:
        server.stop()


# -- servers as processes -------------------------------------------------------------------------------------

def _serve(model_repo: Path, archive: str, log: Path, flush_ms: float = 50.0) -> process.ServerProcess:
    env = child_env(model_repo)
    env["VITCODEC_ARCHIVE_FLUSH_MS"] = str(flush_ms)
    server = process.ServerProcess.serving(model_repo, "fmnist-q2", log, "--archive", archive, "--log-level",
                                           "warning", env=env)
    return server.start_ready(120.0)


def _kill(server: process.ServerProcess) -> None:
    os.killpg(server.pid, signal.SIGKILL)
    server.proc.wait(30)
    server.stop(0.0)  # reaped already: closes the log


def _stored(location: str) -> set[str]:
    store = open_archive(location)  # no writer thread: reads on this thread
    try:
        ids, after = set(), None
        while True:
            page = store.list(ImageQuery(limit=1000, after=after))
            ids |= {e.id for e in page.images}
            if page.next_cursor is None:
                return ids
            after = (page.images[-1].created_us, page.images[-1].id)
    finally:
        store.close()


# -- SQLite: disk full ----------------------------------------------------------------------------------------

def test_disk_full_classification_goes_on_and_writes_resume(model_repo, edge_streams, tmp_path, scrape_metrics):
    db = tmp_path / "archive.db"
    server = _serve(model_repo, str(db), tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            before = {_classify(http, s) for s in edge_streams[:4]}
            assert _listed(http) == before
            # no file of the server may reach past 4 KiB: a commit writes at least one frame of the write-ahead
            # log (a 24-byte header and a 4 KiB page) past that point, whether it appends to the log or starts
            # it over after a checkpoint, so every write comes up short or fails, as on a full disk (SQLite
            # says "database or disk is full" or "disk I/O error" depending on where the write was cut)
            resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
            try:
                during = {_classify(http, s) for s in edge_streams[4:8]}

                def lost() -> float:
                    return scrape_metrics(http.get("/metrics").text, "vitcodec_archive_failures_total",
                                          operation="write")

                _wait(lambda: lost() >= len(during), "the lost entries in /metrics",
                      diagnostics=lambda: _archive_state(http))
                ready = http.get("/v2/health/ready").json()
                assert ready["archive"] == "degraded" and ready["archive_error"].startswith("write: "), ready
                assert scrape_metrics(http.get("/metrics").text, "vitcodec_archive_up") == 0
            finally:  # space is freed
                resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            after = {_classify(http, s) for s in edge_streams[8:11]}
            _wait(lambda: http.get("/v2/health/ready").json().get("archive") == "ok", "the archive to recover",
                  diagnostics=lambda: _archive_state(http))
            stored = _listed(http)
            assert before <= stored and after <= stored and not (during - before) & stored
        server.stop(30.0)
        assert _stored(str(db)) == stored  # the file is whole: another reader sees the same
    finally:
        server.stop(0.0)


# -- SIGKILL: at most the last batch window -------------------------------------------------------------------

WINDOW_S = 1.0  # the batch window of this test (archive_flush_ms), long enough to be seen against the answers
COMMIT_SLACK_S = 0.75  # one commit's duration on a busy 2-core machine, generously


@pytest.fixture(scope="module")
def many_streams(package) -> list[bytes]:
    """400 distinct real streams (Fashion-MNIST test images, or noise without the dataset) for fmnist-q2."""
    import numpy as np
    from vitcodec.edge.encoder import EdgeEncoder

    try:
        from vitcodec.models.data import load_fashion_mnist

        images = load_fashion_mnist("test")[0][:400, :, :, None]
    except Exception:  # noqa: BLE001 - no dataset: distinct noise images make distinct streams too
        images = np.random.default_rng(0).integers(0, 256, (400, 28, 28, 1), dtype=np.uint8)
    streams = [r.stream for r in EdgeEncoder(package).encode_pixels(np.ascontiguousarray(images))]
    return list(dict.fromkeys(streams))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_loses_at_most_the_last_batch_window(backend, request, model_repo, many_streams, tmp_path):
    location = (request.getfixturevalue("postgres").new_database() if backend == "postgresql"
                else str(tmp_path / "archive.db"))
    server = _serve(model_repo, location, tmp_path / "server.log", flush_ms=WINDOW_S * 1000)
    answered: list[tuple[float, str]] = []
    try:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            start = time.monotonic()
            for stream in many_streams:  # each a new entry
                answered.append((time.monotonic(), _classify(http, stream)))  # the time its answer arrived
                if time.monotonic() - start > 2.5 * WINDOW_S:  # two windows committed, the third open
                    break
            _kill(server)
            killed_at = time.monotonic()
    finally:
        server.stop(0.0)
    assert len(answered) >= 10, "too few answers to see the window"
    stored = _stored(location)
    lost = [t for t, image_id in answered if image_id not in stored]
    early = [round(killed_at - t, 3) for t in lost if killed_at - t > WINDOW_S + COMMIT_SLACK_S]
    assert not early, f"entries answered this many seconds before the kill were lost: {early}"
    assert len(stored) >= len(answered) - len(lost) > 0
