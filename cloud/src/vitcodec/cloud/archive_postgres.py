"""The shared archive: a PostgreSQL database (psycopg 3), for several server replicas behind one load balancer
(the k8s HPA) that must see one archive.

Selected by an archive setting that is a URL: ``--archive postgresql://USER[:PASSWORD]@HOST:PORT/DB`` (any
libpq parameter may follow as a query string, e.g. ``?sslmode=require``; the password may come from
``PGPASSWORD`` or ``~/.pgpass`` as for psql). Each replica writes through its own writer thread in batches,
exactly like the SQLite archive (cloud/archive_sql.py); the id is the stream's hash, so replicas that see the
same stream update one row. The tables are created on first use (under an advisory lock, so replicas that
start together do not race).

When the database is down or unreachable, classification goes on: each batch that cannot be committed is
dropped and counted, readiness says degraded, reads answer 503; the next batch connects again, so writes
resume by themselves once the server is back. Reads reuse a few idle connections; one that broke while the
database was away is replaced on first use.
"""

from __future__ import annotations

import contextlib
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from .archive_sql import POSTGRES, SqlArchive
from .errors import ArchiveUnavailable
from .metrics import Metrics

try:
    import psycopg
except ImportError:  # the cloud extra installs it; a SQLite archive does not need it
    psycopg = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from typing import LiteralString

CONNECT_TIMEOUT_S = 5  # an unreachable database costs a batch this long at most (the queue absorbs the wait)
STATEMENT_TIMEOUT_MS = 60_000
IDLE_READERS = 4  # idle read connections kept per server
_WRITE_LOCK = 0x76697463  # pg_advisory_xact_lock key of every write transaction ("vitc")


def _psycopg():  # returns the psycopg module (its type is the module's own)
    """psycopg, or ImportError saying how to install it when it is missing."""
    if psycopg is None:
        raise ImportError("a postgresql:// archive needs psycopg 3: pip install 'vitcodec[cloud]' "
                          "(or pip install 'psycopg[binary]')")
    return psycopg


def _trusted(query: str) -> LiteralString:
    """`query`, built here from constants only (never from outside input), as the literal SQL psycopg's
    annotations ask for."""
    return cast("LiteralString", query)


def redact(url: str) -> str:
    """The URL without its password, for logs and readiness."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class PostgresArchive(SqlArchive):
    """The archive in a PostgreSQL database, written by one thread per server in batches.

    `max_bytes` bounds the bytes of the live rows of both tables (the sum of ``pg_column_size`` over them; one
    sequential scan per retention pass): PostgreSQL reuses the space of deleted rows after (auto)vacuum but
    does not shrink its files, so the files' size would never fall under a limit. Indexes come on top.
    """

    dialect = POSTGRES

    def __init__(self, url: str, *, max_age_days: float | None = None, max_bytes: int | None = None,
                 flush_interval_s: float = 0.05, flush_entries: int = 256, retention_interval_s: float = 60.0,
                 max_pending: int = 10_000, metrics: Metrics | None = None) -> None:
        pg = _psycopg()
        from psycopg.conninfo import conninfo_to_dict

        try:
            conninfo_to_dict(url)
        except pg.ProgrammingError as exc:
            raise ValueError(f"archive: not a valid PostgreSQL URL ({exc})") from None
        self.url = url
        self.db_errors = (pg.Error, OSError)
        self._idle: list[Any] = []
        self._idle_lock = threading.Lock()
        self._schema_checked = False
        super().__init__(redact(url), max_age_days=max_age_days, max_bytes=max_bytes,
                         flush_interval_s=flush_interval_s, flush_entries=flush_entries,
                         retention_interval_s=retention_interval_s, max_pending=max_pending, metrics=metrics)

    def _connect(self) -> Any:
        conn = _psycopg().connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                  application_name="vitcodec-archive")
        try:
            conn.execute(_trusted(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}"))
            if not self._schema_checked:
                if not self._schema_ready(conn):
                    self._transaction(conn, self._prepare)  # creates the tables, or upgrades an old archive
                self._schema_checked = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _transaction(self, conn: Any, fn: Callable[[Any], Any]) -> Any:
        """`fn(conn)` in one transaction, holding the archive's write lock: the writers of several replicas
        take turns (a stream is found by its hash before it is inserted, and times are made unique)."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
            return fn(conn)

    def _columns(self, conn: Any, table: str) -> list[str]:
        rows = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                            "current_schema() AND table_name = %s ORDER BY ordinal_position", (table,)).fetchall()
        return [row[0] for row in rows]

    def _used_bytes(self, conn: Any) -> int:
        row = conn.execute("SELECT (SELECT coalesce(sum(pg_column_size(i.*)), 0) FROM images i) + "
                           "(SELECT coalesce(sum(pg_column_size(r.*)), 0) FROM reclassifications r)").fetchone()
        return int(row[0])

    # -- reads: a few pooled connections --------------------------------------------------------------------
    def _take(self) -> Any | None:
        with self._idle_lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
        return None

    def _give(self, conn: Any) -> None:
        with self._idle_lock:
            if len(self._idle) < IDLE_READERS and not conn.closed:
                self._idle.append(conn)
                return
        self._close_quietly(conn)

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Any]:
        conn = self._take() or self._connect()
        try:
            yield conn
        except BaseException:
            self._close_quietly(conn)
            raise
        self._give(conn)

    def _read(self, fn: Callable[[Any], Any]) -> Any:
        """Run a read on a pooled connection; one that broke while the database was away (a restart, a
        failover) is replaced once, then ArchiveUnavailable."""
        pg = _psycopg()
        for attempt in range(2):
            conn = self._take() if attempt == 0 else None
            pooled = conn is not None
            try:
                if conn is None:
                    conn = self._connect()
                result = fn(conn)
            except pg.OperationalError as exc:
                if conn is not None:
                    self._close_quietly(conn)
                if pooled:
                    continue
                raise ArchiveUnavailable(f"the archive {self.location} cannot be read: {exc}") from None
            except self.db_errors as exc:
                if conn is not None:
                    self._close_quietly(conn)
                raise ArchiveUnavailable(f"the archive {self.location} cannot be read: {exc}") from None
            self._give(conn)
            return result
        raise AssertionError("unreachable")

    def close(self) -> None:
        super().close()
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self._close_quietly(conn)
