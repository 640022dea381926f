"""What the SQL archives share: the schema (one place, both dialects), the batched writer thread, the failure
accounting, retention and the queries. `SqliteArchive` (cloud/archive_sqlite.py) and `PostgresArchive`
(cloud/archive_postgres.py) add only how to connect, run a transaction and measure their size. The schema is
compact (see `_SCHEMA`; a row's answer is packed by cloud/archive_rows.py); an archive of the first schema is
upgraded in place when opened (cloud/archive_upgrade.py).

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
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from vitcodec.results import ClassScore

from .archive import (
    ID_BYTES,
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
    stream_digest,
    stream_id,
)
from .archive_rows import confidence_bits, id_prefix, pack_answer, unpack_answer
from .archive_upgrade import is_first_schema, upgrade_first_schema
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
    blob: str
    table_options: str  # after a table whose primary key is its only index

    def sql(self, text: str) -> str:
        """Queries are written with ``?`` placeholders; PostgreSQL's driver wants ``%s``."""
        return text if self.name == "sqlite" else text.replace("?", "%s")


SQLITE = Dialect("sqlite", "INTEGER", "BLOB", " WITHOUT ROWID")
POSTGRES = Dialect("postgresql", "BIGINT", "BYTEA", "")

# Compact (issue 19: 10^6 zoo streams, ~30 bytes each, in <= 120 MB of SQLite). The answer is packed
# (cloud/archive_rows.py) and what repeats is interned:
# models: one row per model (name, version, model id) and image size, with its label list as far as archived
#   answers named its classes (JSON, index -> label); rows refer to it by `ref`.
# clients: the clients' identities, referred to by `ref`.
# images: one row per distinct stream. `created_us` (when first classified; unique: the writer moves a
#   collision by a microsecond) is the primary key, so in SQLite the table itself is stored in time order and
#   the listing (newest first) needs no index of its own. The id is not stored: it is the stream's hash,
#   recomputed on read; `id_prefix` (its first 32 bits) is indexed to find a stream by id. `label` is the
#   top-1 class index; `last_seen_us` is NULL while it equals `created_us`.
# reclassifications: other models' answers for the same stream (`vitcodec-cloud reclassify`), one per
#   (image, model); deleted with their image.
# A label filter and a confidence bound are checked while walking the table newest first (no index: the
# listing stops at a page).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    ref INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    model_id TEXT NOT NULL,
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    labels TEXT NOT NULL,
    UNIQUE (name, version, model_id, height, width)
);
CREATE TABLE IF NOT EXISTS clients (
    ref INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS images (
    created_us {int64} PRIMARY KEY,
    id_prefix INTEGER NOT NULL,
    last_seen_us {int64},
    seen INTEGER NOT NULL DEFAULT 1,
    model INTEGER NOT NULL,
    client INTEGER,
    label INTEGER NOT NULL,
    confidence INTEGER NOT NULL,
    answer {blob} NOT NULL,
    stream {blob} NOT NULL
);
CREATE INDEX IF NOT EXISTS images_by_id ON images (id_prefix);
CREATE TABLE IF NOT EXISTS reclassifications (
    image {int64} NOT NULL,
    model INTEGER NOT NULL,
    created_us {int64} NOT NULL,
    label INTEGER NOT NULL,
    confidence INTEGER NOT NULL,
    answer {blob} NOT NULL,
    PRIMARY KEY (image, model)
){table_options}
"""
TABLES = ("models", "clients", "images", "reclassifications")


def schema(dialect: Dialect) -> list[str]:
    """The CREATE statements of the archive in `dialect`, one per item (all idempotent)."""
    text = _SCHEMA.format(int64=dialect.int64, blob=dialect.blob, table_options=dialect.table_options)
    return [s.strip() for s in text.split(";") if s.strip()]


_IMAGE_COLUMNS = "created_us, last_seen_us, seen, model, client, label, confidence, answer, stream"
_IN_CHUNK = 500  # ids per IN (...) list
SCAN_ROWS = 100_000  # entries one filtered page walks at most (~10 ms on SQLite, 2 busy cores)
_FIRST_STRETCH = 2_000


@dataclass(frozen=True)
class ModelRow:
    """An interned model (and image size), with its label list."""

    name: str
    version: str
    model_id: str
    image_size: tuple[int, int]
    labels: list[str]

    def label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else ""


@dataclass(frozen=True)
class StoredRecord:
    """A record as written: how often and until when it was seen (more than once when merged, or upgraded)."""

    record: ArchiveRecord
    seen: int = 1
    last_seen_us: int | None = None


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
        self._names_lock = threading.Lock()
        self._models: dict[int, ModelRow] = {}
        self._clients: dict[int, str] = {}
        self._model_refs: dict[tuple, int] = {}
        self._client_refs: dict[str, int] = {}
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

    @abc.abstractmethod
    def _columns(self, conn: Any, table: str) -> list[str]:
        """The columns of `table`; empty when there is no such table."""

    def _schema_ready(self, conn: Any) -> bool:
        """Whether the compact schema is in place (nothing to create or upgrade)."""
        return "id_prefix" in self._columns(conn, "images") and all(
            self._columns(conn, table) for table in TABLES)

    def _prepare(self, conn: Any) -> None:
        """Inside a write transaction: create the tables, or upgrade an archive of the first schema in place."""
        if is_first_schema(self._columns(conn, "images")):
            upgrade_first_schema(self, conn)
        for statement in schema(self.dialect):
            conn.execute(statement)
        self._forget_names()

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
        items = [StoredRecord(r) for r in batch]
        try:
            self._transaction(conn, lambda c: self._guarded(c, lambda c: self._write_images(c, items)))
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
            conn.execute(sql("DELETE FROM reclassifications WHERE image < ?"), (cutoff,))
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
                row = conn.execute(sql("SELECT created_us FROM images ORDER BY created_us LIMIT 1 OFFSET ?"),
                                   (k - 1,)).fetchone()
                cutoff = (row[0] if row is not None else now_us()) + 1
                conn.execute(sql("DELETE FROM reclassifications WHERE image < ?"), (cutoff,))
                n = conn.execute(sql("DELETE FROM images WHERE created_us < ?"), (cutoff,)).rowcount
                deleted += n
                if self.metrics is not None:
                    self.metrics.archive_retention.labels("size").inc(n)
        if deleted:
            self._compact(conn)
            log.info("archive %s: retention removed %d entries", self.location, deleted)
        return deleted

    # -- the interned names --------------------------------------------------------------------------------
    def _load_names(self, conn: Any) -> None:
        """Read the models and clients tables into the cache (they only grow: refs never change)."""
        models = {ref: ModelRow(name, version, model_id, (height, width), json.loads(labels))
                  for ref, name, version, model_id, height, width, labels in conn.execute(
                      "SELECT ref, name, version, model_id, height, width, labels FROM models").fetchall()}
        clients = dict(conn.execute("SELECT ref, name FROM clients").fetchall())
        with self._names_lock:
            self._models, self._clients = models, clients
            self._model_refs = {(m.name, m.version, m.model_id, m.image_size): ref for ref, m in models.items()}
            self._client_refs = {name: ref for ref, name in clients.items()}

    def _forget_names(self) -> None:
        """After a write transaction failed: what it interned may not exist (read the tables again)."""
        with self._names_lock:
            self._models, self._clients, self._model_refs, self._client_refs = {}, {}, {}, {}

    def _model(self, conn: Any, ref: int, index: int = 0) -> ModelRow:
        """The model `ref`, read again when the cache lacks it or its label `index`."""
        model = self._models.get(ref)
        if model is None or not model.label(index):
            self._load_names(conn)
            model = self._models.get(ref)
        if model is None:
            raise ArchiveUnavailable(f"the archive {self.location} names an unknown model ({ref})")
        return model

    def _model_ref(self, conn: Any, name: str, version: str, model_id: str, image_size: tuple[int, int],
                   top: list[ClassScore]) -> int:
        """Inside a write transaction: the ref of a model (added when new), its label list holding `top`'s."""
        key = (name, version, model_id, tuple(image_size))
        ref = self._model_refs.get(key)
        if ref is None or any(self._models[ref].label(s.index) != s.label for s in top):
            self._load_names(conn)
            ref = self._model_refs.get(key)
        if ref is None:
            ref = conn.execute("SELECT coalesce(max(ref), 0) + 1 FROM models").fetchone()[0]
            conn.execute(self._sql("INSERT INTO models (ref, name, version, model_id, height, width, labels) "
                                   "VALUES (?, ?, ?, ?, ?, ?, '[]')"), (ref, name, version, model_id, *image_size))
            model = ModelRow(name, version, model_id, (image_size[0], image_size[1]), [])
        else:
            model = self._models[ref]
        labels = list(model.labels)
        for s in top:
            if s.index >= len(labels):
                labels += [""] * (s.index + 1 - len(labels))
            labels[s.index] = s.label
        if labels != model.labels or ref not in self._models:
            conn.execute(self._sql("UPDATE models SET labels = ? WHERE ref = ?"), (json.dumps(labels), ref))
            with self._names_lock:
                self._models[ref] = dataclasses.replace(model, labels=labels)
                self._model_refs[key] = ref
        return ref

    def _client_ref(self, conn: Any, client: str | None) -> int | None:
        if client is None:
            return None
        ref = self._client_refs.get(client)
        if ref is None:
            self._load_names(conn)
            ref = self._client_refs.get(client)
        if ref is None:
            ref = conn.execute("SELECT coalesce(max(ref), 0) + 1 FROM clients").fetchone()[0]
            conn.execute(self._sql("INSERT INTO clients (ref, name) VALUES (?, ?)"), (ref, client))
            with self._names_lock:
                self._clients[ref], self._client_refs[client] = client, ref
        return ref

    # -- rows ----------------------------------------------------------------------------------------------
    def _write_images(self, conn: Any, items: list[StoredRecord]) -> None:
        """Inside a write transaction: insert new streams, count again the ones already kept (found by their
        hash, whatever id the record names), and give each new one a free `created_us`."""
        sql = self._sql
        digests = [stream_digest(item.record.stream) for item in items]
        known = self._keys_of(conn, digests)  # digest -> (created_us, last_seen_us)
        taken: set[int] = set()
        span = [min(i.record.created_us for i in items) - 1]  # the keys in use are known up to here (keys only grow)

        def free(key: int) -> int:
            """`key`, or the next microsecond no entry holds (reading the keys in use as far as needed)."""
            while True:
                if key > span[0]:
                    upper = key + len(items) + 1024
                    taken.update(row[0] for row in conn.execute(
                        sql("SELECT created_us FROM images WHERE created_us > ? AND created_us <= ?"),
                        (span[0], upper)).fetchall())
                    span[0] = upper
                if key not in taken:
                    return key
                key += 1

        inserts: list[tuple] = []
        updates: dict[int, list[int]] = {}  # created_us -> [extra seen, last_seen_us]
        for item, digest in zip(items, digests):
            r = item.record
            last_seen = max(item.last_seen_us or r.created_us, r.created_us)
            if digest in known:
                key, previous = known[digest]
                update = updates.setdefault(key, [0, previous])
                update[0] += item.seen
                update[1] = max(update[1], last_seen)
                continue
            key = free(r.created_us)
            taken.add(key)
            known[digest] = (key, last_seen)
            inserts.append((key, id_prefix(digest), None if last_seen == key else last_seen, item.seen,
                            self._model_ref(conn, r.model, r.version, r.model_id, r.image_size, r.top),
                            self._client_ref(conn, r.client), r.top[0].index, confidence_bits(r.confidence),
                            pack_answer(r.top, r.novelty), r.stream))
        cursor = conn.cursor()
        if inserts:
            cursor.executemany(sql(f"INSERT INTO images (created_us, id_prefix, last_seen_us, seen, model, client, "
                                   f"label, confidence, answer, stream) VALUES ({', '.join('?' * 10)})"), inserts)
        if updates:
            cursor.executemany(sql("UPDATE images SET seen = seen + ?, last_seen_us = ? WHERE created_us = ?"),
                               [(extra, last_seen, key) for key, (extra, last_seen) in updates.items()])

    def _keys_of(self, conn: Any, digests: list[bytes]) -> dict[bytes, tuple[int, int]]:
        """digest -> (created_us, last_seen_us) of the archived streams among `digests`."""
        prefixes = sorted({id_prefix(d) for d in digests})
        wanted = set(digests)
        found: dict[bytes, tuple[int, int]] = {}
        for start in range(0, len(prefixes), _IN_CHUNK):
            chunk = prefixes[start:start + _IN_CHUNK]
            rows = conn.execute(self._sql(f"SELECT created_us, last_seen_us, stream FROM images WHERE id_prefix IN "
                                          f"({', '.join('?' * len(chunk))})"), chunk).fetchall()
            for created, last_seen, stream in rows:
                digest = stream_digest(bytes(stream))
                if digest in wanted:
                    found[digest] = (created, last_seen or created)
        return found

    def _find(self, conn: Any, image_id: str, columns: str) -> tuple | None:
        """The row (`columns`, then the stream) of the entry `image_id`, or None."""
        try:
            digest = bytes.fromhex(image_id)
        except ValueError:
            return None
        if len(digest) != ID_BYTES:
            return None
        rows = conn.execute(self._sql(f"SELECT {columns}, stream FROM images WHERE id_prefix = ?"),
                            (id_prefix(digest),)).fetchall()
        return next((row for row in rows if stream_digest(bytes(row[-1])) == digest), None)

    def _entry(self, conn: Any, row: tuple) -> ArchiveEntry:
        created, last_seen, seen, model_ref, client_ref, label, confidence, answer, stream = row
        stream = bytes(stream)
        model = self._model(conn, model_ref, label)
        top, novelty = unpack_answer(bytes(answer), confidence, model.labels)
        client = None
        if client_ref is not None:
            if client_ref not in self._clients:
                self._load_names(conn)
            client = self._clients.get(client_ref)
        return ArchiveEntry(stream_id(stream), created, last_seen or created, seen, model.name, model.version,
                            model.model_id, client, top, novelty, len(stream), model.image_size)

    # -- reading -------------------------------------------------------------------------------------------
    def list(self, query: ImageQuery) -> ImagePage:
        """Newest first. A label or confidence filter is checked while walking the table; one page walks at most
        `SCAN_ROWS` entries, so a filter few entries match answers in bounded time with a page that may hold
        fewer than `limit` images (even none) and a cursor to walk on from."""
        def read(conn: Any) -> ImagePage:
            where: list[str] = []
            args: list[Any] = []
            if query.label is not None:
                self._load_names(conn)
                pairs = [(ref, i) for ref, m in self._models.items() for i, name in enumerate(m.labels)
                         if name == query.label]
                if not pairs:
                    return ImagePage([], None)
                where.append("(" + " OR ".join("(model = ? AND label = ?)" for _ in pairs) + ")")
                args.extend(x for pair in pairs for x in pair)
            if query.max_confidence is not None:
                where.append("confidence <= ?")
                args.append(confidence_bits(query.max_confidence))
            if query.since_us is not None:
                where.append("created_us >= ?")
                args.append(query.since_us)
            if query.after is not None:
                where.append("created_us < ?")  # created_us is unique: the cursor's id breaks no tie
                args.append(query.after[0])
            filtered = query.label is not None or query.max_confidence is not None
            floor: tuple[int, bytes] | None = None
            rows: list[tuple] = []
            # a filtered walk tries a short stretch first (most pages fill there), then the longest one
            for stretch in (_FIRST_STRETCH, SCAN_ROWS) if filtered else (None,):
                floor = None if stretch is None else self._scan_floor(conn, query, stretch)
                bounded = where + ["created_us > ?"] if floor is not None else where
                bound = [floor[0]] if floor is not None else []
                sql = self._sql(f"SELECT {_IMAGE_COLUMNS} FROM images" + (" WHERE " + " AND ".join(bounded)
                                                                           if bounded else "")
                                + " ORDER BY created_us DESC LIMIT ?")
                rows = conn.execute(sql, (*args, *bound, query.limit + 1)).fetchall()
                if len(rows) > query.limit or floor is None:
                    break
            entries = [self._entry(conn, row) for row in rows[:query.limit]]
            if len(rows) > query.limit:
                return ImagePage(entries, encode_cursor(entries[-1].created_us, entries[-1].id))
            if floor is not None:  # the walk stopped at its bound: go on from the entry below it, included
                return ImagePage(entries, encode_cursor(floor[0] + 1, stream_id(floor[1])))
            return ImagePage(entries, None)

        return self._read(read)

    def _scan_floor(self, conn: Any, query: ImageQuery, stretch: int) -> tuple[int, bytes] | None:
        """(created_us, stream) of the entry `stretch` entries below where the page starts, when the walk must
        stop above it (None: the entries left to walk are fewer)."""
        where = ["created_us < ?"] if query.after is not None else []
        args: list[Any] = [query.after[0]] if query.after is not None else []
        row = conn.execute(self._sql("SELECT created_us, stream FROM images" + (" WHERE " + where[0] if where else "")
                                     + " ORDER BY created_us DESC LIMIT 1 OFFSET ?"), (*args, stretch)).fetchone()
        if row is None or (query.since_us is not None and row[0] < query.since_us):
            return None
        return row[0], bytes(row[1])

    def get(self, image_id: str) -> ArchiveEntry | None:
        def read(conn: Any) -> ArchiveEntry | None:
            row = self._find(conn, image_id, _IMAGE_COLUMNS.removesuffix(", stream"))
            if row is None:
                return None
            entry = self._entry(conn, row)
            again = conn.execute(self._sql("SELECT model, created_us, label, confidence, answer "
                                           "FROM reclassifications WHERE image = ? ORDER BY created_us, model"),
                                 (entry.created_us,)).fetchall()
            found = []
            for model_ref, created, label, confidence, answer in again:
                model = self._model(conn, model_ref, label)
                top, novelty = unpack_answer(bytes(answer), confidence, model.labels)
                found.append(Reclassification(image_id, model.name, model.version, model.model_id, top, novelty,
                                              created))
            return dataclasses.replace(entry, reclassifications=found)

        return self._read(read)

    def stream(self, image_id: str) -> bytes | None:
        row = self._read(lambda conn: self._find(conn, image_id, "created_us"))
        return None if row is None else bytes(row[-1])

    def delete(self, image_id: str) -> bool:
        sql = self._sql

        def remove(conn: Any) -> bool:
            row = self._find(conn, image_id, "created_us")
            if row is None:
                return False
            conn.execute(sql("DELETE FROM reclassifications WHERE image = ?"), (row[0],))
            return conn.execute(sql("DELETE FROM images WHERE created_us = ?"), (row[0],)).rowcount > 0

        return bool(self._in_order(remove))

    def count(self, since_us: int | None = None) -> int:
        sql = self._sql("SELECT count(*) FROM images WHERE created_us >= ?")
        return int(self._read(lambda conn: conn.execute(sql, (since_us or 0,)).fetchone()[0]))

    def iter_streams(self, since_us: int | None = None, page: int = 512) -> Iterator[list[StoredStream]]:
        query = self._sql("SELECT created_us, model, label, stream FROM images WHERE created_us >= ? "
                          "ORDER BY created_us LIMIT ?")
        start = since_us or 0
        while True:
            def read(conn: Any, start: int = start) -> list[StoredStream]:
                out = []
                for created, model_ref, label, stream in conn.execute(query, (start, page)).fetchall():
                    model = self._model(conn, model_ref, label)
                    stream = bytes(stream)
                    out.append(StoredStream(stream_id(stream), stream, model.label(label), model.name,
                                            model.version, model.model_id, created))
                return out

            rows = self._read(read)
            if not rows:
                return
            yield rows
            start = rows[-1].created_us + 1

    def add_reclassifications(self, rows: list[Reclassification]) -> None:
        self._in_order(lambda conn: self._guarded(conn, lambda c: self._write_reclassifications(c, rows)))

    def _write_reclassifications(self, conn: Any, rows: list[Reclassification]) -> None:
        """Inside a write transaction: store (or replace) re-classifications of archived streams."""
        keys = self._keys_of(conn, [bytes.fromhex(r.image_id) for r in rows])
        refs = {}
        for start in range(0, len(keys), _IN_CHUNK):
            chunk = [key for key, _ in list(keys.values())[start:start + _IN_CHUNK]]
            refs.update(conn.execute(self._sql(f"SELECT created_us, model FROM images WHERE created_us IN "
                                               f"({', '.join('?' * len(chunk))})"), chunk).fetchall())
        values = []
        for r in rows:
            found = keys.get(bytes.fromhex(r.image_id))
            if found is None:  # deleted meanwhile
                continue
            size = self._model(conn, refs[found[0]]).image_size
            ref = self._model_ref(conn, r.model, r.version, r.model_id, size, r.top)
            values.append((found[0], ref, r.created_us, r.top[0].index, confidence_bits(r.top[0].probability),
                           pack_answer(r.top, r.novelty)))
        if values:
            conn.cursor().executemany(self._sql(_RECLASSIFY), values)

    def _guarded(self, conn: Any, fn: Callable[[Any], Any]) -> Any:
        """`fn` inside a write transaction that interns names: the cache forgets them when it fails."""
        try:
            return fn(conn)
        except BaseException:
            self._forget_names()
            raise


_RECLASSIFY = """
INSERT INTO reclassifications (image, model, created_us, label, confidence, answer) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (image, model) DO UPDATE SET created_us = excluded.created_us, label = excluded.label,
    confidence = excluded.confidence, answer = excluded.answer
"""
