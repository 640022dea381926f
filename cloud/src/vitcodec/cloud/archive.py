"""The archive: the cloud keeps what it saw. Every classified stream is stored once (its id is a hash of its
bytes, so the same stream sent twice is one entry) with the answer it got, and can be listed, read back,
reconstructed on demand, deleted, and re-classified by a newer model (``vitcodec-cloud reclassify``).

- `ArchiveStore` is the seam: what the data plane, the routes and the reclassify job need from a store.
  `SqliteArchive` implements it with the standard library's sqlite3 (one file, WAL mode); another backend
  (PostgreSQL) implements the same methods.
- Writes never sit on the request path: `add` puts the record on a bounded queue and returns; one writer
  thread commits what arrived as one transaction every `flush_interval_s` (50 ms) or `flush_entries` records,
  whichever comes first. Answers are therefore sent *before* their entry commits, and a SIGKILL loses at most
  the entries of the batch window that had not committed yet (the last ~50 ms of answers, plus one commit's
  duration). Reads first wait for the records queued before them (`sync`), so an id an answer carried can
  be read back at once.
- Failures (disk full, a path that cannot be written, a broken file) never fail a classification: the
  entries of the failed batch are dropped and counted (``vitcodec_archive_failures_total``), the error is
  logged at most once a minute, and `status()` reports the archive as degraded until a write succeeds again.
- Retention, by age and by size (oldest first), runs in the writer thread at start and then every
  `retention_interval_s`.
"""

from __future__ import annotations

import abc
import base64
import binascii
import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vitcodec.results import OOD_THRESHOLD, ClassScore, ReconstructResult

from .errors import ArchiveUnavailable, InvalidRequest
from .metrics import Metrics

log = logging.getLogger("vitcodec.cloud.archive")

ARCHIVE_TOP_K = 5  # classes stored per entry, whatever top_k the request asked for
ID_HEX_CHARS = 32  # an id is the first 128 bits of the stream's SHA-256, in hex
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
LOG_EVERY_S = 60.0  # archive failures are logged at most this often
_US = 1_000_000


def stream_id(stream: bytes) -> str:
    """The archive id of a stream: the first 128 bits of its SHA-256 in hex (equal bytes, equal id)."""
    return hashlib.sha256(stream).hexdigest()[:ID_HEX_CHARS]


def now_us() -> int:
    """UTC now in microseconds since the epoch (what the archive stores)."""
    return time.time_ns() // 1000


def iso_time(us: int) -> str:
    """Microseconds since the epoch -> ISO 8601 UTC with a Z, to the millisecond."""
    text = datetime.fromtimestamp(us / _US, timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def parse_time(text: str, what: str = "since") -> int:
    """An ISO 8601 time (a naive one is UTC) -> microseconds since the epoch; InvalidRequest when malformed."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise InvalidRequest(f"{what} must be an ISO 8601 time such as 2026-01-31T12:00:00Z; got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * _US)


def encode_cursor(created_us: int, image_id: str) -> str:
    """Opaque page cursor: where the next page starts (newest first: strictly older than this entry)."""
    return base64.urlsafe_b64encode(f"v1:{created_us}:{image_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        version, created, image_id = raw.split(":")
        if version != "v1" or not created.isdigit() or len(image_id) != ID_HEX_CHARS:
            raise ValueError(raw)
        int(image_id, 16)
        return int(created), image_id
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidRequest("malformed cursor: pass the next_cursor of a previous page unchanged") from None


# -- what is stored and read back ---------------------------------------------------------------------------

def _scores_json(top: list[ClassScore]) -> str:
    return json.dumps([[s.index, s.label, s.probability] for s in top], separators=(",", ":"))


def _scores_from_json(text: str) -> list[ClassScore]:
    return [ClassScore(int(i), str(label), float(p)) for i, label, p in json.loads(text)]


def _scores_dicts(top: list[ClassScore]) -> list[dict[str, Any]]:
    return [{"index": s.index, "label": s.label, "probability": s.probability} for s in top]


@dataclass(frozen=True)
class ArchiveRecord:
    """One classified stream as the data plane hands it to the archive."""

    id: str
    stream: bytes
    model: str
    version: str
    model_id: str  # hex
    top: list[ClassScore]  # the first ARCHIVE_TOP_K classes
    image_size: tuple[int, int]
    novelty: float | None = None
    client: str | None = None  # the client's identity when the transport knows one
    created_us: int = field(default_factory=now_us)

    @property
    def label(self) -> str:
        return self.top[0].label

    @property
    def confidence(self) -> float:
        return self.top[0].probability


@dataclass(frozen=True)
class Reclassification:
    """Another model's answer for an archived stream (``vitcodec-cloud reclassify``), kept beside the first."""

    image_id: str
    model: str
    version: str
    model_id: str
    top: list[ClassScore]
    novelty: float | None = None
    created_us: int = field(default_factory=now_us)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "model_id": self.model_id,
                "created": iso_time(self.created_us), "label": self.top[0].label,
                "confidence": self.top[0].probability, "top_k": _scores_dicts(self.top), "novelty": self.novelty}


@dataclass(frozen=True)
class ArchiveEntry:
    """An archived stream's metadata (its bytes are read separately, `ArchiveStore.stream`)."""

    id: str
    created_us: int  # first seen
    last_seen_us: int
    seen: int  # times it was classified
    model: str
    version: str
    model_id: str
    client: str | None
    top: list[ClassScore]
    novelty: float | None
    num_bytes: int
    image_size: tuple[int, int]
    reclassifications: list[Reclassification] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.top[0].label

    @property
    def confidence(self) -> float:
        return self.top[0].probability

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "created": iso_time(self.created_us), "last_seen": iso_time(self.last_seen_us),
                "seen": self.seen, "model": self.model, "version": self.version, "model_id": self.model_id,
                "client": self.client, "label": self.label, "confidence": self.confidence,
                "top_k": _scores_dicts(self.top), "novelty": self.novelty,
                "out_of_distribution": None if self.novelty is None else self.novelty > OOD_THRESHOLD,
                "bytes": self.num_bytes, "image_size": list(self.image_size),
                "reclassifications": [r.as_dict() for r in self.reclassifications]}


@dataclass(frozen=True)
class ImageQuery:
    """A page of the listing: filters, how many, and where to start (newest first)."""

    label: str | None = None
    max_confidence: float | None = None
    since_us: int | None = None
    limit: int = DEFAULT_LIMIT
    after: tuple[int, str] | None = None  # (created_us, id) of the last entry of the previous page

    @classmethod
    def parse(cls, label: str | None = None, max_confidence: float | None = None, since: str | None = None,
              limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> ImageQuery:
        """From the API's parameters; InvalidRequest for a malformed filter or cursor."""
        if max_confidence is not None and not (0.0 <= max_confidence <= 1.0):
            raise InvalidRequest(f"max_confidence must be between 0 and 1, got {max_confidence}")
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        return cls(label or None, max_confidence, parse_time(since) if since else None, int(limit),
                   decode_cursor(cursor) if cursor else None)


@dataclass(frozen=True)
class ImagePage:
    images: list[ArchiveEntry]
    next_cursor: str | None  # None on the last page


@dataclass(frozen=True)
class ArchiveStatus:
    state: str  # "starting", "ok" or "degraded"
    error: str = ""  # the last failure while degraded
    failures: int = 0  # entries or operations lost since start


@dataclass(frozen=True)
class StoredStream:
    """What the reclassify job reads per entry."""

    id: str
    stream: bytes
    label: str
    model: str
    version: str
    model_id: str
    created_us: int


# -- the seam -----------------------------------------------------------------------------------------------

class ArchiveStore(abc.ABC):
    """What the server and ``vitcodec-cloud reclassify`` need from an archive; `SqliteArchive` is the only
    implementation today. Every method but `add` may block (the data plane calls them in a worker thread);
    read and delete failures raise `ArchiveUnavailable`, write failures never raise (see `status`)."""

    def start(self) -> None:
        """Start background work (the writer thread); a store used only for reading needs none."""

    @abc.abstractmethod
    def add(self, record: ArchiveRecord) -> None:
        """Queue one classified stream; never blocks and never raises."""

    @abc.abstractmethod
    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until every record added before this call has been written (or failed); False on timeout."""

    @abc.abstractmethod
    def list(self, query: ImageQuery) -> ImagePage: ...

    @abc.abstractmethod
    def get(self, image_id: str) -> ArchiveEntry | None: ...

    @abc.abstractmethod
    def stream(self, image_id: str) -> bytes | None: ...

    @abc.abstractmethod
    def delete(self, image_id: str) -> bool:
        """Remove an entry and its re-classifications; False when there was none."""

    @abc.abstractmethod
    def status(self) -> ArchiveStatus: ...

    @abc.abstractmethod
    def apply_retention(self) -> int:
        """Delete what is past the age and size limits (oldest first); the number of entries deleted."""

    @abc.abstractmethod
    def count(self, since_us: int | None = None) -> int: ...

    @abc.abstractmethod
    def iter_streams(self, since_us: int | None = None, page: int = 512) -> Iterator[list[StoredStream]]:
        """Every entry (oldest first, at or after `since_us`), in pages."""

    @abc.abstractmethod
    def add_reclassifications(self, rows: list[Reclassification]) -> None:
        """Store (or replace) the answers of one model for some entries, keyed by (image id, model)."""

    def close(self) -> None:
        """Write what is queued, then stop."""


# -- SQLite -------------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    created_us INTEGER NOT NULL,
    last_seen_us INTEGER NOT NULL,
    seen INTEGER NOT NULL DEFAULT 1,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    model_id TEXT NOT NULL,
    client TEXT,
    label TEXT NOT NULL,
    confidence REAL NOT NULL,
    novelty REAL,
    top_k TEXT NOT NULL,
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    num_bytes INTEGER NOT NULL,
    stream BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS images_by_time ON images (created_us, id);
CREATE INDEX IF NOT EXISTS images_by_label ON images (label, created_us, id);
CREATE TABLE IF NOT EXISTS reclassifications (
    image_id TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    model_id TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    label TEXT NOT NULL,
    confidence REAL NOT NULL,
    novelty REAL,
    top_k TEXT NOT NULL,
    PRIMARY KEY (image_id, model)
);
"""

_META_COLUMNS = ("id, created_us, last_seen_us, seen, model, version, model_id, client, top_k, novelty, num_bytes, "
                 "height, width")

_UPSERT = """
INSERT INTO images (id, created_us, last_seen_us, seen, model, version, model_id, client, label, confidence,
                    novelty, top_k, height, width, num_bytes, stream)
VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET last_seen_us = max(last_seen_us, excluded.last_seen_us), seen = seen + 1
"""


def _entry(row: tuple) -> ArchiveEntry:
    (image_id, created, last_seen, seen, model, version, model_id, client, top_k, novelty, num_bytes,
     height, width) = row
    return ArchiveEntry(image_id, created, last_seen, seen, model, version, model_id, client,
                        _scores_from_json(top_k), novelty, num_bytes, (height, width))


class _Command:
    """Work for the writer thread that must run in order with the queued records (sync, delete)."""

    def __init__(self, fn: Callable[[sqlite3.Connection | None], Any]) -> None:
        self.fn = fn
        self.future: concurrent.futures.Future = concurrent.futures.Future()


_STOP = object()


class SqliteArchive(ArchiveStore):
    """The archive in one SQLite file (WAL mode), written by one thread in batches.

    `max_bytes` bounds the pages in use by the database file (``(page_count - freelist_count) * page_size``:
    the data, its indexes and SQLite's own bookkeeping; the write-ahead log, checkpointed back into the file
    regularly, comes on top). Retention deletes the oldest entries until the database is under it.
    """

    def __init__(self, path: str | Path, *, max_age_days: float | None = None, max_bytes: int | None = None,
                 flush_interval_s: float = 0.05, flush_entries: int = 256, retention_interval_s: float = 60.0,
                 max_pending: int = 10_000, metrics: Metrics | None = None) -> None:
        self.path = Path(path)
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
        if metrics is not None:
            metrics.archive_up.set(0)

    @classmethod
    def from_settings(cls, settings: Any, metrics: Metrics | None = None) -> SqliteArchive:
        max_mb = settings.archive_max_mb
        return cls(settings.archive, max_age_days=settings.archive_max_age_days,
                   max_bytes=None if max_mb is None else int(max_mb * 1024 * 1024),
                   flush_interval_s=settings.archive_flush_ms / 1e3, flush_entries=settings.archive_flush_entries,
                   metrics=metrics)

    # -- connections ---------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        """A connection with the schema in place (created on first use); raises sqlite3.Error or OSError."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                                  "AND name IN ('images', 'reclassifications')").fetchone()[0]
            if tables < 2:
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # effective only before the first table
                conn.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the file
                conn.executescript(_SCHEMA)
            # in WAL mode: a commit survives the process being killed; a power cut may lose the last ones
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run a read on a short-lived connection of its own (WAL: readers never wait for the writer)."""
        try:
            conn = self._connect()
            try:
                return fn(conn)
            finally:
                conn.close()
        except (sqlite3.Error, OSError) as exc:
            raise ArchiveUnavailable(f"the archive {self.path} cannot be read: {exc}") from None

    def _in_order(self, fn: Callable[[sqlite3.Connection], Any], timeout: float = 30.0,
                  transaction: bool = True) -> Any:
        """Run a write (in one transaction, unless `fn` makes its own) in the writer thread after every record
        queued before it, or here when no writer runs (``vitcodec-cloud reclassify``)."""
        def call(conn: sqlite3.Connection) -> Any:
            return _transaction(conn, fn) if transaction else fn(conn)

        if self._thread is None or not self._thread.is_alive():
            return self._read(call)

        def run(conn: sqlite3.Connection | None) -> Any:
            if conn is None:
                raise ArchiveUnavailable(f"the archive {self.path} cannot be written: {self._error}")
            try:
                return call(conn)
            except (sqlite3.Error, OSError) as exc:
                raise ArchiveUnavailable(f"the archive {self.path} cannot be written: {exc}") from None

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
            if stop:
                self._flush(conn, batch)
                if conn is not None:
                    conn.close()
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
                    except (sqlite3.Error, OSError) as exc:
                        self._failed("retention", exc, 1)
                        conn.close()
                        conn = None
                next_retention = time.monotonic() + self.retention_interval_s

    def _open(self, conn: sqlite3.Connection | None) -> sqlite3.Connection | None:
        if conn is not None:
            return conn
        try:
            conn = self._connect()
        except (sqlite3.Error, OSError) as exc:
            self._failed("open", exc, 0)
            return None
        if self._state == "starting":
            self._set_ok()
        return conn

    def _flush(self, conn: sqlite3.Connection | None, batch: list[ArchiveRecord]) -> sqlite3.Connection | None:
        """Commit `batch` as one transaction; on failure the batch is dropped and counted."""
        if not batch:
            return conn
        conn = self._open(conn)
        if conn is None:
            self._failed("write", self._error, len(batch))
            return None
        rows = [(r.id, r.created_us, r.created_us, r.model, r.version, r.model_id, r.client, r.label, r.confidence,
                 r.novelty, _scores_json(r.top), r.image_size[0], r.image_size[1], len(r.stream), r.stream)
                for r in batch]
        try:
            _transaction(conn, lambda c: c.executemany(_UPSERT, rows))
        except (sqlite3.Error, OSError) as exc:
            self._failed("write", exc, len(batch))
            conn.close()
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
            log.warning("archive %s: writing again", self.path)

    def _failed(self, operation: str, error: Any, lost: int) -> None:
        """Count and (at most once a minute) log a failure; the archive is degraded until a write succeeds."""
        message = str(error)
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
                      self.path, operation, lost, message, more)

    def status(self) -> ArchiveStatus:
        with self._lock:
            return ArchiveStatus(self._state, self._error, self._failures)

    # -- retention -----------------------------------------------------------------------------------------
    def apply_retention(self) -> int:
        return int(self._in_order(self._retain, transaction=False))

    def _retain(self, conn: sqlite3.Connection) -> int:
        deleted = _transaction(conn, self._retain_locked)
        if deleted:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # the file shrinks now, not later
        if self.metrics is not None:
            self.metrics.archive_bytes.set(_used_bytes(conn))
        return deleted

    def _retain_locked(self, conn: sqlite3.Connection) -> int:
        """Inside a transaction: drop entries older than max_age_days, then the oldest until under max_bytes."""
        deleted = 0
        if self.max_age_days is not None:
            cutoff = now_us() - int(self.max_age_days * 86400 * _US)
            conn.execute("DELETE FROM reclassifications WHERE image_id IN "
                         "(SELECT id FROM images WHERE created_us < ?)", (cutoff,))
            aged = conn.execute("DELETE FROM images WHERE created_us < ?", (cutoff,)).rowcount
            deleted += aged
            if aged and self.metrics is not None:
                self.metrics.archive_retention.labels("age").inc(aged)
        if self.max_bytes is not None:
            for _ in range(64):  # each round deletes at least one entry; a few rounds reach the limit
                used = _used_bytes(conn)
                rows = conn.execute("SELECT count(*) FROM images").fetchone()[0]
                if used <= self.max_bytes or rows == 0:
                    break
                k = max(1, math.ceil(rows * (used - self.max_bytes) / used * 1.1))
                oldest = "SELECT id FROM images ORDER BY created_us, id LIMIT ?"
                conn.execute(f"DELETE FROM reclassifications WHERE image_id IN ({oldest})", (k,))
                n = conn.execute(f"DELETE FROM images WHERE id IN ({oldest})", (k,)).rowcount
                deleted += n
                if self.metrics is not None:
                    self.metrics.archive_retention.labels("size").inc(n)
        if deleted:
            # hand the freed pages back to the file system (auto_vacuum = INCREMENTAL). Python's sqlite3 steps a
            # statement without result columns once, and each step of this pragma frees one page: hence the loop
            for _ in range(conn.execute("PRAGMA freelist_count").fetchone()[0]):
                conn.execute("PRAGMA incremental_vacuum(1)")
            log.info("archive %s: retention removed %d entries", self.path, deleted)
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
        sql = (f"SELECT {_META_COLUMNS} FROM images" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY created_us DESC, id DESC LIMIT ?")
        rows = self._read(lambda conn: conn.execute(sql, (*args, query.limit + 1)).fetchall())
        entries = [_entry(r) for r in rows[:query.limit]]
        more = len(rows) > query.limit
        return ImagePage(entries, encode_cursor(entries[-1].created_us, entries[-1].id) if more else None)

    def get(self, image_id: str) -> ArchiveEntry | None:
        def read(conn: sqlite3.Connection) -> ArchiveEntry | None:
            row = conn.execute(f"SELECT {_META_COLUMNS} FROM images WHERE id = ?", (image_id,)).fetchone()
            if row is None:
                return None
            again = conn.execute("SELECT image_id, model, version, model_id, top_k, novelty, created_us "
                                 "FROM reclassifications WHERE image_id = ? ORDER BY created_us, model",
                                 (image_id,)).fetchall()
            return dataclasses.replace(_entry(row), reclassifications=[
                Reclassification(i, m, v, mid, _scores_from_json(t), n, c) for i, m, v, mid, t, n, c in again])

        return self._read(read)

    def stream(self, image_id: str) -> bytes | None:
        row = self._read(lambda conn: conn.execute("SELECT stream FROM images WHERE id = ?",
                                                   (image_id,)).fetchone())
        return None if row is None else bytes(row[0])

    def delete(self, image_id: str) -> bool:
        def remove(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM reclassifications WHERE image_id = ?", (image_id,))
            return conn.execute("DELETE FROM images WHERE id = ?", (image_id,)).rowcount > 0

        return bool(self._in_order(remove))

    def count(self, since_us: int | None = None) -> int:
        return int(self._read(lambda conn: conn.execute(
            "SELECT count(*) FROM images WHERE created_us >= ?", (since_us or 0,)).fetchone()[0]))

    def iter_streams(self, since_us: int | None = None, page: int = 512) -> Iterator[list[StoredStream]]:
        after: tuple[int, str] = (since_us - 1 if since_us else -1, "~")  # "~" sorts after every hex id
        while True:
            created, last = after
            rows = self._read(lambda conn: conn.execute(
                "SELECT id, stream, label, model, version, model_id, created_us FROM images "
                "WHERE created_us > ? OR (created_us = ? AND id > ?) ORDER BY created_us, id LIMIT ?",
                (created, created, last, page)).fetchall())
            if not rows:
                return
            yield [StoredStream(i, bytes(s), label, m, v, mid, c) for i, s, label, m, v, mid, c in rows]
            after = (rows[-1][6], rows[-1][0])

    def add_reclassifications(self, rows: list[Reclassification]) -> None:
        values = [(r.image_id, r.model, r.version, r.model_id, r.created_us, r.top[0].label, r.top[0].probability,
                   r.novelty, _scores_json(r.top)) for r in rows]
        self._in_order(lambda conn: conn.executemany(
            "INSERT OR REPLACE INTO reclassifications (image_id, model, version, model_id, created_us, label, "
            "confidence, novelty, top_k) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values))


def _transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    """`fn(conn)` in one write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back when it raises)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise
    conn.execute("COMMIT")
    return result


def _used_bytes(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return (pages - free) * size


# -- reconstructions, cached ----------------------------------------------------------------------------------

class ReconstructionCache:
    """The PNGs of recently reconstructed archive entries (LRU, bounded by count and bytes); thread-safe."""

    def __init__(self, max_items: int = 256, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: collections.OrderedDict[str, ReconstructResult] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, image_id: str) -> ReconstructResult | None:
        with self._lock:
            result = self._items.get(image_id)
            if result is not None:
                self._items.move_to_end(image_id)
            return result

    def put(self, image_id: str, result: ReconstructResult) -> None:
        with self._lock:
            old = self._items.pop(image_id, None)
            if old is not None:
                self._bytes -= len(old.png)
            if len(result.png) > self.max_bytes:
                return
            self._items[image_id] = result
            self._bytes += len(result.png)
            while len(self._items) > self.max_items or self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped.png)

    def discard(self, image_id: str) -> None:
        with self._lock:
            old = self._items.pop(image_id, None)
            if old is not None:
                self._bytes -= len(old.png)

    def __len__(self) -> int:
        return len(self._items)
