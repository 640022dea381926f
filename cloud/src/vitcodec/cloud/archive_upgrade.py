"""Upgrading an archive of the first schema (ids in hex, the top-k as JSON, names and labels in every row) to the
compact one (cloud/archive_sql.py), in place, the first time the new code opens it.

It runs inside the transaction that prepares the schema (so a crash leaves the old archive as it was, and other
servers of a PostgreSQL archive wait for it): the old tables are renamed, the new ones created, the entries
copied in time order through the same write path as new ones (ids become the streams' hashes again, which they
always were for entries the server wrote), the re-classifications after them, and the old tables dropped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from vitcodec.results import ClassScore

from .archive import ArchiveRecord, Reclassification, stream_id

if TYPE_CHECKING:
    from .archive_sql import SqlArchive

log = logging.getLogger("vitcodec.cloud.archive")

PAGE = 5000  # entries copied per query

_RENAMES = {
    "sqlite": ["ALTER TABLE images RENAME TO images_v1",
               "ALTER TABLE reclassifications RENAME TO reclassifications_v1"],
    # PostgreSQL names a primary key's index after its table: rename it too, or the new table's clashes
    "postgresql": ["ALTER TABLE images RENAME TO images_v1",
                   "ALTER TABLE images_v1 RENAME CONSTRAINT images_pkey TO images_v1_pkey",
                   "ALTER TABLE reclassifications RENAME TO reclassifications_v1",
                   "ALTER TABLE reclassifications_v1 RENAME CONSTRAINT reclassifications_pkey "
                   "TO reclassifications_v1_pkey"],
}


def is_first_schema(columns: list[str]) -> bool:
    """Whether the ``images`` table with these columns is of the first schema."""
    return "top_k" in columns


def _scores(text: str) -> list[ClassScore]:
    import json

    return [ClassScore(int(i), str(label), float(p)) for i, label, p in json.loads(text)]


def upgrade_first_schema(store: SqlArchive, conn: Any) -> int:
    """Inside a write transaction: move every entry and re-classification to the compact schema; how many
    entries were moved."""
    from .archive_sql import StoredRecord, schema

    sql = store.dialect.sql
    for statement in _RENAMES[store.dialect.name]:
        conn.execute(statement)
    for statement in schema(store.dialect):
        conn.execute(statement)
    columns = "id, created_us, last_seen_us, seen, model, version, model_id, client, top_k, novelty, height, width"
    first = sql(f"SELECT {columns}, stream FROM images_v1 ORDER BY created_us, id LIMIT ?")
    rest = sql(f"SELECT {columns}, stream FROM images_v1 WHERE created_us > ? OR (created_us = ? AND id > ?) "
               "ORDER BY created_us, id LIMIT ?")
    moved = 0
    rows = conn.execute(first, (PAGE,)).fetchall()
    while rows:
        items = []
        for image_id, created, last_seen, seen, model, version, model_id, client, top_k, novelty, h, w, stream \
                in rows:
            record = ArchiveRecord(image_id, bytes(stream), model, version, model_id, _scores(top_k), (h, w),
                                   novelty, client, created)
            items.append(StoredRecord(record, seen, last_seen))
        store._write_images(conn, items)
        moved += len(rows)
        last = rows[-1]
        rows = conn.execute(rest, (last[1], last[1], last[0], PAGE)).fetchall()
    again = conn.execute("SELECT r.model, r.version, r.model_id, r.top_k, r.novelty, r.created_us, i.stream "
                         "FROM reclassifications_v1 r JOIN images_v1 i ON i.id = r.image_id").fetchall()
    for start in range(0, len(again), PAGE):
        store._write_reclassifications(conn, [
            Reclassification(stream_id(bytes(stream)), model, version, model_id, _scores(top_k), novelty, created)
            for model, version, model_id, top_k, novelty, created, stream in again[start:start + PAGE]])
    conn.execute("DROP TABLE reclassifications_v1")
    conn.execute("DROP TABLE images_v1")
    store._compact(conn)
    log.warning("archive %s: upgraded %d entries and %d re-classifications to the compact schema",
                store.location, moved, len(again))
    return moved
