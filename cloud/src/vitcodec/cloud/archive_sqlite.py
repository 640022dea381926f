"""The embedded archive: one SQLite file in WAL mode (the standard library's sqlite3), for one server.

WAL lets readers (the routes, ``vitcodec-cloud reclassify`` in another process) read while the writer thread
commits; ``synchronous=NORMAL`` makes a commit survive the process being killed (a power cut may lose the last
ones). Each read opens a short-lived connection of its own: cheap for a local file, and it never waits for the
writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .archive_sql import SQLITE, SqlArchive
from .metrics import Metrics


class SqliteArchive(SqlArchive):
    """The archive in one SQLite file, written by one thread in batches (cloud/archive_sql.py).

    `max_bytes` bounds the pages in use by the database file (``(page_count - freelist_count) * page_size``:
    the data, its indexes and SQLite's own bookkeeping; the write-ahead log, checkpointed back into the file
    regularly, comes on top). Retention deletes the oldest entries until the database is under it and hands
    the freed pages back to the file system.
    """

    dialect = SQLITE
    db_errors = (sqlite3.Error, OSError)

    def __init__(self, path: str | Path, *, max_age_days: float | None = None, max_bytes: int | None = None,
                 flush_interval_s: float = 0.05, flush_entries: int = 256, retention_interval_s: float = 60.0,
                 max_pending: int = 10_000, metrics: Metrics | None = None) -> None:
        self.path = Path(path)
        super().__init__(str(self.path), max_age_days=max_age_days, max_bytes=max_bytes,
                         flush_interval_s=flush_interval_s, flush_entries=flush_entries,
                         retention_interval_s=retention_interval_s, max_pending=max_pending, metrics=metrics)

    def _connect(self) -> sqlite3.Connection:
        """A connection with the schema in place (created on first use); raises sqlite3.Error or OSError."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            if not self._columns(conn, "images"):
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # effective only before the first table
                conn.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the file
            # in WAL mode: a commit survives the process being killed; a power cut may lose the last ones
            conn.execute("PRAGMA synchronous = NORMAL")
            if not self._schema_ready(conn):
                self._transaction(conn, self._prepare)  # creates the tables, or upgrades an old archive
        except BaseException:
            conn.close()
            raise
        return conn

    def _transaction(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> Any:
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

    def _columns(self, conn: sqlite3.Connection, table: str) -> list[str]:
        return [row[0] for row in conn.execute("SELECT name FROM pragma_table_info(?)", (table,)).fetchall()]

    def _used_bytes(self, conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def _compact(self, conn: sqlite3.Connection) -> None:
        # hand the freed pages back to the file system (auto_vacuum = INCREMENTAL). Python's sqlite3 steps a
        # statement without result columns once, and each step of this pragma frees one page: hence the loop
        for _ in range(conn.execute("PRAGMA freelist_count").fetchone()[0]):
            conn.execute("PRAGMA incremental_vacuum(1)")

    def _after_retention(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # the file shrinks now, not later
