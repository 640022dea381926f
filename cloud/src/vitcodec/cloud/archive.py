"""The archive: the cloud keeps what it saw. Every classified stream is stored once (its id is a hash of its
bytes, so the same stream sent twice is one entry) with the answer it got, and can be listed, read back,
reconstructed on demand, deleted, and re-classified by a newer model (``vitcodec-cloud reclassify``).

This module holds what every store shares: the records, the query and its cursor, and `ArchiveStore`, the
seam between the server (data plane, routes, reclassify job) and a backend. `open_archive` picks the backend
from the archive setting:

- a file path: `SqliteArchive` (cloud/archive_sqlite.py), one SQLite file in WAL mode, for one server;
- a ``postgresql://`` URL: `PostgresArchive` (cloud/archive_postgres.py), for several server replicas.

Both write in batches off the request path, account for failures and apply retention the same way
(cloud/archive_sql.py, which also holds the one schema).
"""

from __future__ import annotations

import abc
import base64
import binascii
import collections
import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vitcodec.results import OOD_THRESHOLD, ClassScore, RankedAnswer, ReconstructResult

from .errors import InvalidRequest
from .metrics import Metrics

ARCHIVE_TOP_K = 5  # classes stored per entry, whatever top_k the request asked for
ID_BYTES = 16  # an id is the first 128 bits of the stream's SHA-256
ID_HEX_CHARS = 2 * ID_BYTES  # ... written in hex
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
LOG_EVERY_S = 60.0  # archive failures are logged at most this often
_US = 1_000_000


def stream_digest(stream: bytes) -> bytes:
    """The archive id of a stream as bytes: the first 128 bits of its SHA-256 (equal bytes, equal id)."""
    return hashlib.sha256(stream).digest()[:ID_BYTES]


def stream_id(stream: bytes) -> str:
    """The archive id of a stream, in hex (what answers and the API carry)."""
    return stream_digest(stream).hex()


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

def _scores_dicts(top: list[ClassScore]) -> list[dict[str, Any]]:
    return [{"index": s.index, "label": s.label, "probability": s.probability} for s in top]


@dataclass(frozen=True)
class ArchiveRecord(RankedAnswer):
    """One classified stream as the data plane hands it to the archive."""

    id: str  # the stream's hash (`stream_id`): the archive finds streams by it
    stream: bytes
    model: str
    version: str
    model_id: str  # hex
    top: list[ClassScore]  # the first ARCHIVE_TOP_K classes
    image_size: tuple[int, int]
    novelty: float | None = None
    client: str | None = None  # the client's identity when the transport knows one
    created_us: int = field(default_factory=now_us)


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
class ArchiveEntry(RankedAnswer):
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
    """What the server and ``vitcodec-cloud reclassify`` need from an archive (`SqliteArchive`,
    `PostgresArchive`). Every method but `add` may block (the data plane calls them in a worker thread);
    read and delete failures raise `ArchiveUnavailable`, write failures never raise (see `status`)."""

    def start(self) -> None:
        """Start background work (the writer thread); a store used only for reading needs none."""
        return None  # the default: nothing to start

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
        return None  # the default: nothing queued, nothing to stop


# -- choosing a backend ---------------------------------------------------------------------------------------

DATABASE_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(location: str | Path) -> bool:
    """Whether the archive setting names a PostgreSQL database (else it is a SQLite file path)."""
    return isinstance(location, str) and location.startswith(DATABASE_SCHEMES)


def open_archive(location: str | Path, *, max_age_days: float | None = None, max_bytes: int | None = None,
                 flush_interval_s: float = 0.05, flush_entries: int = 256, retention_interval_s: float = 60.0,
                 metrics: Metrics | None = None) -> ArchiveStore:
    """The store for an archive setting: `PostgresArchive` for a ``postgresql://`` URL, else `SqliteArchive`
    for a file path. Nothing is opened yet (`start` opens it in the writer thread, reads open on demand)."""
    options: dict[str, Any] = dict(max_age_days=max_age_days, max_bytes=max_bytes, flush_interval_s=flush_interval_s,
                                   flush_entries=flush_entries, retention_interval_s=retention_interval_s,
                                   metrics=metrics)
    # imported here: the backends build on this module, and psycopg is needed only for a database URL
    if is_database_url(location):
        from .archive_postgres import PostgresArchive

        return PostgresArchive(str(location), **options)
    from .archive_sqlite import SqliteArchive

    return SqliteArchive(location, **options)


def archive_from_settings(settings: Any, metrics: Metrics | None = None) -> ArchiveStore:
    """`open_archive` with the server's archive settings (`Settings.archive` and the ``archive_*`` fields)."""
    max_mb = settings.archive_max_mb
    return open_archive(settings.archive, max_age_days=settings.archive_max_age_days,
                        max_bytes=None if max_mb is None else int(max_mb * 1024 * 1024),
                        flush_interval_s=settings.archive_flush_ms / 1e3, flush_entries=settings.archive_flush_entries,
                        metrics=metrics)


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
