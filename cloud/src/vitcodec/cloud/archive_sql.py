"""What the SQL archives share: the schema (one place, both dialects), the batched writer thread, the failure
accounting, retention and the queries. `SqliteArchive` (cloud/archive_sqlite.py) and `PostgresArchive`
(cloud/archive_postgres.py) add only how to connect, run a transaction and measure their size.

Why one writer thread with batches: a commit costs a disk flush (SQLite) or a round trip (PostgreSQL), about
what classifying a stream costs, so committing per request would halve throughput. `add` puts the record on a
bounded queue and returns; the writer commits what arrived as one transaction `flush_interval_s` (50 ms)
after the first record of the batch, or as soon as `flush_entries` wait. Answers are therefore sent *before*
their entry commits: a SIGKILL loses the entries of the open batch (the last ~50 ms of answers plus one
commit's duration), never anything committed before. Commands that must run in order with the records
(sync, delete, re-classifications) go through the same queue.

Failures never raise into a classification: the batch that failed is dropped and counted
(``vitcodec_archive_failures_total``), the error is logged at most once a minute, `status()` says degraded, and
the next batch tries again on a fresh connection, so writes resume by themselves when the disk has room or the
database is back.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .archive import (
    LOG_EVERY_S,
    ArchiveEntry,
    ArchiveRecord,
    ArchiveStatus,
    ArchiveStore,
    ImagePage,
    ImageQuery,
    Reclassification,
    StoredStream,
    encode_cursor,
    now_us,
    scores_from_json,
    scores_json,
)
from .errors import ArchiveUnavailable
from .metrics import Metrics

log = logging.getLogger("vitcodec.cloud.archive")

_US = 1_000_000


# -- the schema: the one description of what is stored, for both dialects -------------------------------------

@dataclass(frozen=True)
class Dialect:
    """The few words in which SQLite and PostgreSQL differ."""

    name: str
    int64: str  # times in microseconds since the epoch
    real: str  # IEEE double: a confidence read back equals the one answered
    blob: str
    key: str  # text that is compared byte by byte (hex ids: the cursor's order is the index's)
    greatest: str  # the larger of two values

    def sql(self, text: str) -> str:
        """Queries are written with ``?`` placeholders; PostgreSQL's driver wants ``%s``."""
        return text if self.name == "sqlite" else text.replace("?", "%s")


SQLITE = Dialect("sqlite", "INTEGER", "REAL", "BLOB", "TEXT", "max")
POSTGRES = Dialect("postgresql", "BIGINT", "DOUBLE PRECISION", "BYTEA", 'TEXT COLLATE "C"', "GREATEST")

# images: one row per distinct stream (id = the first 128 bits of its SHA-256, hex), the answer of its first
#   classification (model, top-k as JSON [[index, label, probability], ...], novelty), when it was first and
#   last classified and how often, the client's identity, and the stream's bytes.
# reclassifications: other models' answers for the same stream (`vitcodec-cloud reclassify`), one per
#   (image, model); deleted with their image.
# The two indexes serve the listing (newest first, optionally by top-1 label) and the cursor (created_us, id).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id {key} PRIMARY KEY,
    created_us {int64} NOT NULL,
    last_seen_us {int64} NOT NULL,
    seen INTEGER NOT NULL DEFAULT 1,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    model_id TEXT NOT NULL,
    client TEXT,
    label TEXT NOT NULL,
    confidence {real} NOT NULL,
    novelty {real},
    top_k TEXT NOT NULL,
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    num_bytes INTEGER NOT NULL,
    stream {blob} NOT NULL
);
CREATE INDEX IF NOT EXISTS images_by_time ON images (created_us, id);
CREATE INDEX IF NOT EXISTS images_by_label ON images (label, created_us, id);
CREATE TABLE IF NOT EXISTS reclassifications (
    image_id {key} NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    model_id TEXT NOT NULL,
    created_us {int64} NOT NULL,
    label TEXT NOT NULL,
    confidence {real} NOT NULL,
    novelty {real},
    top_k TEXT NOT NULL,
    PRIMARY KEY (image_id, model)
);
"""


def schema(dialect: Dialect) -> list[str]:
    """The CREATE statements of the archive in `dialect`, one per item (all idempotent)."""
    text = _SCHEMA.format(int64=dialect.int64, real=dialect.real, blob=dialect.blob, key=dialect.key)
    return [s.strip() for s in text.split(";") if s.strip()]


_META_COLUMNS = ("id, created_us, last_seen_us, seen, model, version, model_id, client, top_k, novelty, num_bytes, "
                 "height, width")

_UPSERT = """
INSERT INTO images (id, created_us, last_seen_us, seen, model, version, model_id, client, label, confidence,
                    novelty, top_k, height, width, num_bytes, stream)
VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET last_seen_us = {greatest}(images.last_seen_us, excluded.last_seen_us),
                               seen = images.seen + 1
"""

_RECLASSIFY = """
INSERT INTO reclassifications (image_id, model, version, model_id, created_us, label, confidence, novelty, top_k)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (image_id, model) DO UPDATE SET version = excluded.version, model_id = excluded.model_id,
    created_us = excluded.created_us, label = excluded.label, confidence = excluded.confidence,
    novelty = excluded.novelty, top_k = excluded.top_k
"""


def _entry(row: tuple) -> ArchiveEntry:
    (image_id, created, last_seen, seen, model, version, model_id, client, top_k, novelty, num_bytes,
     height, width) = row
    return ArchiveEntry(image_id, created, last_seen, seen, model, version, model_id, client,
                        scores_from_json(top_k), novelty, num_bytes, (height, width))


def record_row(r: ArchiveRecord) -> tuple:
    """An `ArchiveRecord` as the parameters of the upsert (also the benchmark's bulk path)."""
    return (r.id, r.created_us, r.created_us, r.model, r.version, r.model_id, r.client, r.label, r.confidence,
            r.novelty, scores_json(r.top), r.image_size[0], r.image_size[1], len(r.stream), r.stream)


# -- the writer thread ----------------------------------------------------------------------------------------

class _Command:
    """Work for the writer thread that must run in order with the queued records (sync, delete)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.future: concurrent.futures.Future = concurrent.futures.Future()


_STOP = object()


class SqlArchive(ArchiveStore):
    """An archive in an SQL database, written by one thread in batches. Subclasses say how to connect
    (`_connect`, with the schema in place), how to run a transaction, and how big the database is."""

    dialect: Dialect
    #: the driver's exceptions that mean "the database failed" (as opposed to a bug here)
    db_errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, location: str, *, max_age_days: float | None = None, max_bytes: int | None = None,
                 flush_interval_s: float = 0.05, flush_entries: int = 256, retention_interval_s: float = 60.0,
                 max_pending: int = 10_000, metrics: Metrics | None = None) -> None:
        self.location = location  # for messages: a path, or a URL without its password
        self.max_age_days = max_age_days
        self.max_bytes = max_bytes
        self.flush_interval_s = flush_interval_s
        self.flush_entries = max(1, flush_entries)
        self.retention_interval_s = retention_interval_s
        self.metrics = metrics
        self._queue: queue.Queue = queue.Queue(max_pending)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._state = "starting"
        self._error = ""
        self._failures = 0
        self._last_log = -math.inf
        self._unlogged = 0
        self._upsert = self.dialect.sql(_UPSERT.format(greatest=self.dialect.greatest))
        if metrics is not None:
            metrics.archive_up.set(0)

    # -- what a backend provides ---------------------------------------------------------------------------
    @abc.abstractmethod
    def _connect(self) -> Any:
        """A new connection with the schema in place; raises one of `db_errors`."""

    @abc.abstractmethod
    def _transaction(self, conn: Any, fn: Callable[[Any], Any]) -> Any:
        """`fn(conn)` in one write transaction, rolled back when it raises."""

    @abc.abstractmethod
    def _used_bytes(self, conn: Any) -> int:
        """What `max_bytes` bounds (each backend documents its measure)."""

    def _compact(self, conn: Any) -> None:
        """Inside the retention transaction, after deleting: give space back (SQLite); nothing by default."""

    def _after_retention(self, conn: Any) -> None:
        """After a retention transaction that deleted entries; nothing by default."""

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Any]:
        """A connection for one read (default: a new one, closed after)."""
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    def _close_quietly(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.close()

    # -- helpers -------------------------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        return self.dialect.sql(text)

    def _read(self, fn: Callable[[Any], Any]) -> Any:
        """Run a read on a reader connection; ArchiveUnavailable when the database fails."""
        try:
            with self._reader() as conn:
                return fn(conn)
        except self.db_errors as exc:
            raise ArchiveUnavailable(f"the archive {self.location} cannot be read: {exc}") from None

    def _in_order(self, fn: Callable[[Any], Any], timeout: float = 30.0, transaction: bool = True) -> Any:
        """Run a write (in one transaction, unless `fn` makes its own) in the writer thread after every record
        queued before it, or here when no writer runs (``vitcodec-cloud reclassify``)."""
        def call(conn: Any) -> Any:
            return self._transaction(conn, fn) if transaction else fn(conn)

        if self._thread is None or not self._thread.is_alive():
            return self._read(call)

        def run(conn: Any) -> Any:
            if conn is None:
                raise ArchiveUnavailable(f"the archive {self.location} cannot be written: {self._error}")
            try:
                return call(conn)
            except self.db_errors as exc:
                raise ArchiveUnavailable(f"the archive {self.location} cannot be written: {exc}") from None

        command = _Command(run)
        self._queue.put(command, timeout=timeout)
        return command.future.result(timeout)

    # -- writing -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vitcodec-archive", daemon=True)
            self._thread.start()

    def add(self, record: ArchiveRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._failed("queue_full", f"{self._queue.maxsize} entries are waiting to be written", 1)

    def sync(self, timeout: float = 5.0) -> bool:
        if self._thread is None or not self._thread.is_alive():
            return True
        command = _Command(lambda conn: None)
        try:
            self._queue.put(command, timeout=timeout)
            command.future.result(timeout)
        except (queue.Full, concurrent.futures.TimeoutError):
            return False
        return True

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=30)
        self._thread = None

    def _run(self) -> None:
        conn = self._open(None)
        batch: list[ArchiveRecord] = []
        first_at = 0.0
        next_retention = time.monotonic()
        retention = self.max_age_days is not None or self.max_bytes is not None
        while True:
            now = time.monotonic()
            if batch:
                timeout: float | None = max(0.0, first_at + self.flush_interval_s - now)
            elif retention:
                timeout = max(0.0, next_retention - now)
            else:
                timeout = None
            try:
                items = [self._queue.get(timeout=timeout)]
            except queue.Empty:
                items = []
            while items and len(items) < self.flush_entries * 4:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = False
            for item in items:
                if item is _STOP:
                    stop = True
                elif isinstance(item, ArchiveRecord):
                    if not batch:
                        first_at = time.monotonic()
                    batch.append(item)
                    if len(batch) >= self.flush_entries:
                        conn = self._flush(conn, batch)
                        batch = []
                else:  # a command: runs after everything queued before it
                    conn = self._flush(conn, batch)
                    batch = []
                    if conn is None:
                        conn = self._open(None)
                    try:
                        item.future.set_result(item.fn(conn))
                    except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                        item.future.set_exception(exc)
                        if conn is not None and isinstance(exc, ArchiveUnavailable):
                            self._close_quietly(conn)  # the next use reconnects
                            conn = None
            if stop:
                self._flush(conn, batch)
                if conn is not None:
                    self._close_quietly(conn)
                return
            if batch and time.monotonic() - first_at >= self.flush_interval_s:
                conn = self._flush(conn, batch)
                batch = []
            if retention and time.monotonic() >= next_retention and not batch:
                if conn is None:
                    conn = self._open(None)
                if conn is not None:
                    try:
                        self._retain(conn)
                    except self.db_errors as exc:
                        self._failed("retention", exc, 1)
                        self._close_quietly(conn)
                        conn = None
                next_retention = time.monotonic() + self.retention_interval_s

    def _open(self, conn: Any) -> Any:
        if conn is not None:
            return conn
        try:
            conn = self._connect()
        except self.db_errors as exc:
            self._failed("open", exc, 0)
            return None
        if self._state == "starting":
            self._set_ok()
        return conn

    def _flush(self, conn: Any, batch: list[ArchiveRecord]) -> Any:
        """Commit `batch` as one transaction; on failure the batch is dropped and counted."""
        if not batch:
            return conn
        conn = self._open(conn)
        if conn is None:
            self._failed("write", self._error, len(batch))
            return None
        rows = [record_row(r) for r in batch]
        try:
            self._transaction(conn, lambda c: c.cursor().executemany(self._upsert, rows))
        except self.db_errors as exc:
            self._failed("write", exc, len(batch))
            self._close_quietly(conn)
            return None
        if self.metrics is not None:
            self.metrics.archive_writes.inc(len(batch))
        self._set_ok()
        return conn

    # -- state ---------------------------------------------------------------------------------------------
    def _set_ok(self) -> None:
        with self._lock:
            recovered = self._state == "degraded"
            self._state, self._error = "ok", ""
        if self.metrics is not None:
            self.metrics.archive_up.set(1)
        if recovered:
            log.warning("archive %s: writing again", self.location)

    def _failed(self, operation: str, error: Any, lost: int) -> None:
        """Count and (at most once a minute) log a failure; the archive is degraded until a write succeeds."""
        message = str(error).strip()
        skipped = 0
        with self._lock:
            self._state, self._error = "degraded", f"{operation}: {message}"
            self._failures += max(lost, 1)
            now = time.monotonic()
            should_log = now - self._last_log >= LOG_EVERY_S
            if should_log:
                self._last_log, skipped, self._unlogged = now, self._unlogged, 0
            else:
                self._unlogged += 1
        if self.metrics is not None:
            self.metrics.archive_failures.labels(operation).inc(max(lost, 1))
            self.metrics.archive_up.set(0)
        if should_log:
            more = f" ({skipped} more failures since the last message)" if skipped else ""
            log.error("archive %s: %s failed, %d entries not archived (classification goes on): %s%s",
                      self.location, operation, lost, message, more)

    def status(self) -> ArchiveStatus:
        with self._lock:
            return ArchiveStatus(self._state, self._error, self._failures)

    # -- retention -----------------------------------------------------------------------------------------
    def apply_retention(self) -> int:
        return int(self._in_order(self._retain, transaction=False))

    def _retain(self, conn: Any) -> int:
        deleted = self._transaction(conn, self._retain_locked)
        if deleted:
            self._after_retention(conn)
        if self.metrics is not None:
            self.metrics.archive_bytes.set(self._used_bytes(conn))
        return deleted

    def _retain_locked(self, conn: Any) -> int:
        """Inside a transaction: drop entries older than max_age_days, then the oldest until under max_bytes."""
        sql = self._sql
        deleted = 0
        if self.max_age_days is not None:
            cutoff = now_us() - int(self.max_age_days * 86400 * _US)
            conn.execute(sql("DELETE FROM reclassifications WHERE image_id IN "
                             "(SELECT id FROM images WHERE created_us < ?)"), (cutoff,))
            aged = conn.execute(sql("DELETE FROM images WHERE created_us < ?"), (cutoff,)).rowcount
            deleted += aged
            if aged and self.metrics is not None:
                self.metrics.archive_retention.labels("age").inc(aged)
        if self.max_bytes is not None:
            for _ in range(64):  # each round deletes at least one entry; a few rounds reach the limit
                used = self._used_bytes(conn)
                rows = conn.execute("SELECT count(*) FROM images").fetchone()[0]
                if used <= self.max_bytes or rows == 0:
                    break
                k = max(1, math.ceil(rows * (used - self.max_bytes) / used * 1.1))
                oldest = "SELECT id FROM images ORDER BY created_us, id LIMIT ?"
                conn.execute(sql(f"DELETE FROM reclassifications WHERE image_id IN ({oldest})"), (k,))
                n = conn.execute(sql(f"DELETE FROM images WHERE id IN ({oldest})"), (k,)).rowcount
                deleted += n
                if self.metrics is not None:
                    self.metrics.archive_retention.labels("size").inc(n)
        if deleted:
            self._compact(conn)
            log.info("archive %s: retention removed %d entries", self.location, deleted)
        return deleted

    # -- reading -------------------------------------------------------------------------------------------
    def list(self, query: ImageQuery) -> ImagePage:
        where, args = [], []
        if query.label is not None:
            where.append("label = ?")
            args.append(query.label)
        if query.max_confidence is not None:
            where.append("confidence <= ?")
            args.append(query.max_confidence)
        if query.since_us is not None:
            where.append("created_us >= ?")
            args.append(query.since_us)
        if query.after is not None:
            created, image_id = query.after
            where.append("(created_us < ? OR (created_us = ? AND id < ?))")
            args.extend([created, created, image_id])
        sql = self._sql(f"SELECT {_META_COLUMNS} FROM images" + (" WHERE " + " AND ".join(where) if where else "")
                        + " ORDER BY created_us DESC, id DESC LIMIT ?")
        rows = self._read(lambda conn: conn.execute(sql, (*args, query.limit + 1)).fetchall())
        entries = [_entry(r) for r in rows[:query.limit]]
        more = len(rows) > query.limit
        return ImagePage(entries, encode_cursor(entries[-1].created_us, entries[-1].id) if more else None)

    def get(self, image_id: str) -> ArchiveEntry | None:
        sql = self._sql

        def read(conn: Any) -> ArchiveEntry | None:
            row = conn.execute(sql(f"SELECT {_META_COLUMNS} FROM images WHERE id = ?"), (image_id,)).fetchone()
            if row is None:
                return None
            again = conn.execute(sql("SELECT image_id, model, version, model_id, top_k, novelty, created_us "
                                     "FROM reclassifications WHERE image_id = ? ORDER BY created_us, model"),
                                 (image_id,)).fetchall()
            return dataclasses.replace(_entry(row), reclassifications=[
                Reclassification(i, m, v, mid, scores_from_json(t), n, c) for i, m, v, mid, t, n, c in again])

        return self._read(read)

    def stream(self, image_id: str) -> bytes | None:
        sql = self._sql("SELECT stream FROM images WHERE id = ?")
        row = self._read(lambda conn: conn.execute(sql, (image_id,)).fetchone())
        return None if row is None else bytes(row[0])

    def delete(self, image_id: str) -> bool:
        sql = self._sql

        def remove(conn: Any) -> bool:
            conn.execute(sql("DELETE FROM reclassifications WHERE image_id = ?"), (image_id,))
            return conn.execute(sql("DELETE FROM images WHERE id = ?"), (image_id,)).rowcount > 0

        return bool(self._in_order(remove))

    def count(self, since_us: int | None = None) -> int:
        sql = self._sql("SELECT count(*) FROM images WHERE created_us >= ?")
        return int(self._read(lambda conn: conn.execute(sql, (since_us or 0,)).fetchone()[0]))

    def iter_streams(self, since_us: int | None = None, page: int = 512) -> Iterator[list[StoredStream]]:
        columns = "SELECT id, stream, label, model, version, model_id, created_us FROM images"
        first = self._sql(f"{columns} WHERE created_us >= ? ORDER BY created_us, id LIMIT ?")
        rest = self._sql(f"{columns} WHERE created_us > ? OR (created_us = ? AND id > ?) "
                         "ORDER BY created_us, id LIMIT ?")
        after: tuple[int, str] | None = None
        while True:
            if after is None:
                args: tuple = (since_us or 0, page)
                rows = self._read(lambda conn, args=args: conn.execute(first, args).fetchall())
            else:
                args = (after[0], after[0], after[1], page)
                rows = self._read(lambda conn, args=args: conn.execute(rest, args).fetchall())
            if not rows:
                return
            yield [StoredStream(i, bytes(s), label, m, v, mid, c) for i, s, label, m, v, mid, c in rows]
            after = (rows[-1][6], rows[-1][0])

    def add_reclassifications(self, rows: list[Reclassification]) -> None:
        values = [(r.image_id, r.model, r.version, r.model_id, r.created_us, r.top[0].label, r.top[0].probability,
                   r.novelty, scores_json(r.top)) for r in rows]
        sql = self._sql(_RECLASSIFY)
        self._in_order(lambda conn: conn.cursor().executemany(sql, values))
