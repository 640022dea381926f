"""An archive written by the first schema (hex ids, JSON top-k, names in every row) opened by the current code:
upgraded in place, on SQLite and on a real PostgreSQL, with every entry, its counts, its client and its
re-classifications kept, and nothing of the old tables left."""

from __future__ import annotations

import json
import sqlite3

import pytest
from vitcodec.cloud.archive import ImageQuery, open_archive, stream_id
from vitcodec.cloud.archive_sqlite import SqliteArchive

# the first schema, as that code created it (SQLite words; PostgreSQL's differ in the types only)
FIRST_SCHEMA = """
CREATE TABLE images (
    id {key} PRIMARY KEY, created_us {int64} NOT NULL, last_seen_us {int64} NOT NULL, seen INTEGER NOT NULL DEFAULT 1,
    model TEXT NOT NULL, version TEXT NOT NULL, model_id TEXT NOT NULL, client TEXT, label TEXT NOT NULL,
    confidence {real} NOT NULL, novelty {real}, top_k TEXT NOT NULL, height INTEGER NOT NULL, width INTEGER NOT NULL,
    num_bytes INTEGER NOT NULL, stream {blob} NOT NULL);
CREATE INDEX images_by_time ON images (created_us, id);
CREATE INDEX images_by_label ON images (label, created_us, id);
CREATE TABLE reclassifications (
    image_id {key} NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, model_id TEXT NOT NULL,
    created_us {int64} NOT NULL, label TEXT NOT NULL, confidence {real} NOT NULL, novelty {real},
    top_k TEXT NOT NULL, PRIMARY KEY (image_id, model))
"""
WORDS = {"sqlite": dict(key="TEXT", int64="INTEGER", real="REAL", blob="BLOB"),
         "postgresql": dict(key='TEXT COLLATE "C"', int64="BIGINT", real="DOUBLE PRECISION", blob="BYTEA")}
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
T0 = 1_780_000_000_000_000


def _top(first: int, p: float) -> str:
    rest = [i for i in range(10) if i != first][:4]
    return json.dumps([[first, LABELS[first], p]] + [[i, LABELS[i], (1 - p) / 8] for i in rest])


def _write_first_schema(backend: str, location: str, streams: list[bytes]) -> None:
    """Three entries (one seen twice, one with a client) and a re-classification, in the first schema."""
    statements = [s.strip() for s in FIRST_SCHEMA.format(**WORDS[backend]).split(";")]
    q = "?" if backend == "sqlite" else "%s"
    rows = [(stream_id(s), T0 + i * 1000, T0 + i * 1000 + (5000 if i == 0 else 0), 2 if i == 0 else 1, "fmnist-q2",
             "1", "ab12", "camera-7" if i == 1 else None, LABELS[i + 3], 0.5 + i / 10, 0.25 * i,
             _top(i + 3, 0.5 + i / 10), 28, 28, len(s), s) for i, s in enumerate(streams)]
    again = (stream_id(streams[2]), "fmnist-q1", "2", "cd34", T0 + 10_000, "Bag", 0.875, None, _top(8, 0.875))
    insert_image = f"INSERT INTO images VALUES ({', '.join([q] * 16)})"
    insert_again = f"INSERT INTO reclassifications VALUES ({', '.join([q] * 9)})"
    if backend == "sqlite":
        with sqlite3.connect(location) as conn:
            for statement in statements:
                conn.execute(statement)
            conn.executemany(insert_image, rows)
            conn.execute(insert_again, again)
        return
    import psycopg

    with psycopg.connect(location) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]
        conn.cursor().executemany(insert_image, rows)  # type: ignore[arg-type]
        conn.execute(insert_again, again)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_archive_of_the_first_schema_is_upgraded_in_place(request, tmp_path, backend, edge_streams):
    location = (request.getfixturevalue("postgres").new_database() if backend == "postgresql"
                else str(tmp_path / "old.db"))
    streams = edge_streams[:3]
    _write_first_schema(backend, location, streams)
    store = open_archive(location)
    store.start()
    try:
        page = store.list(ImageQuery())
        assert [e.id for e in page.images] == [stream_id(s) for s in reversed(streams)]
        first = store.get(stream_id(streams[0]))
        assert first is not None
        assert (first.created_us, first.last_seen_us, first.seen) == (T0, T0 + 5000, 2)
        assert (first.model, first.version, first.model_id, first.client) == ("fmnist-q2", "1", "ab12", None)
        assert [(s.index, s.label) for s in first.top] == [(3, "Dress"), (0, "T-shirt/top"), (1, "Trouser"),
                                                             (2, "Pullover"), (4, "Coat")]
        assert first.confidence == 0.5 and first.novelty == 0.0 and first.image_size == (28, 28)
        second = store.get(stream_id(streams[1]))
        assert second is not None and second.client == "camera-7" and second.label == "Coat"
        third = store.get(stream_id(streams[2]))
        assert third is not None and [(r.model, r.version, r.top[0].label, r.top[0].probability)
                                         for r in third.reclassifications] \
            == [("fmnist-q1", "2", "Bag", 0.875)]
        assert store.stream(stream_id(streams[1])) == streams[1]
        assert [e.id for e in store.list(ImageQuery(label="Coat")).images] == [stream_id(streams[1])]
        # the archive keeps working in the new schema: the same stream again is the same entry
        store.add(first_record(streams[0]))
        assert store.sync()
        again = store.get(stream_id(streams[0]))
        assert again is not None and again.seen == 3
    finally:
        store.close()
    if isinstance(store, SqliteArchive):
        with sqlite3.connect(location) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"models", "clients", "images", "reclassifications"}
    # opened again: nothing left to upgrade
    reopened = open_archive(location)
    assert reopened.count() == 3
    reopened.close()


def first_record(stream: bytes):
    from vitcodec.cloud.archive import ArchiveRecord
    from vitcodec.results import ClassScore

    return ArchiveRecord(stream_id(stream), stream, "fmnist-q2", "1", "ab12", [ClassScore(3, "Dress", 0.5)], (28, 28))
