"""The outbox: bitstreams waiting to be answered, one file per entry, written so that a crash or power cut at
any instant leaves either the whole entry or none of it.

Layout under the outbox folder::

    pending/<id>.entry     JSON metadata line, b"\\n", then the bitstream (one file: one atomic rename)
    tmp/                   entries being written (removed at start: a crash mid-write leaves only these)
    rejected/<id>.vcb      streams the server refused for good, next to <id>.json holding its message

Why one file per entry: the rename is the commit point, so no index file can disagree with the entries. The
entry id (`entry_id`) is a hash of the bitstream, the source path and its mtime: the same unchanged file always
gets the same id, which is what lets `results` recognise an answer already given.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENTRY_SUFFIX = ".entry"


class OutboxFull(Exception):
    """Adding these entries would pass the count or size limit; nothing was written."""


@dataclass(frozen=True)
class SourceKey:
    """A source file as it was when encoded: a changed file (new size or mtime) is a new image."""

    path: str
    size: int
    mtime_ns: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SourceKey":
        return cls(str(d["path"]), int(d["size"]), int(d["mtime_ns"]))


def entry_id(stream: bytes, source: SourceKey) -> str:
    """Stable id: the same file (path, mtime) encoded to the same stream always gets the same id."""
    h = hashlib.sha256()
    h.update(stream)
    h.update(b"\0" + source.path.encode("utf-8", "surrogateescape") + b"\0" + str(source.mtime_ns).encode())
    return h.hexdigest()[:32]


@dataclass
class Entry:
    """One pending stream. `stream` is loaded on demand so thousands of entries cost little memory."""

    id: str
    source: SourceKey
    model: str | None
    created: float
    path: Path
    size: int
    meta: dict[str, Any] = field(default_factory=dict)

    def read_stream(self) -> bytes:
        data = self.path.read_bytes()
        return data[data.index(b"\n") + 1:]


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable (POSIX: the directory entry lives in the folder)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(target: Path, data: bytes, tmp_dir: Path, sync_dir: bool = True) -> None:
    """Write tmp, fsync, rename over `target`, then (optionally) fsync the target's folder."""
    tmp = tmp_dir / f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(target.parent)


class Outbox:
    """The spool folder, with count and byte limits (0 = no limit) kept in memory under a lock."""

    def __init__(self, root: Path, max_count: int = 0, max_bytes: int = 0) -> None:
        self.root = Path(root)
        self.pending_dir = self.root / "pending"
        self.tmp_dir = self.root / "tmp"
        self.rejected_dir = self.root / "rejected"
        self.max_count, self.max_bytes = max_count, max_bytes
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}
        for d in (self.pending_dir, self.tmp_dir, self.rejected_dir):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():  # a crash mid-write: never renamed, so never committed
            leftover.unlink(missing_ok=True)

    # -- reading ------------------------------------------------------------------------------------------

    def load(self) -> tuple[list[Entry], list[str]]:
        """Every committed entry (oldest first) and one message per unreadable entry file (left in place)."""
        entries, problems = [], []
        for path in self.pending_dir.glob(f"*{ENTRY_SUFFIX}"):
            try:
                entry = self._read_entry(path)
            except (OSError, ValueError, KeyError) as exc:
                problems.append(f"{path}: damaged outbox entry ({exc}); left in place")
                continue
            entries.append(entry)
        entries.sort(key=lambda e: (e.created, e.id))
        with self._lock:
            self._sizes = {e.id: e.size for e in entries}
        return entries, problems

    @staticmethod
    def _read_entry(path: Path) -> Entry:
        with open(path, "rb") as f:
            head = f.readline(65536)
        if not head.endswith(b"\n"):
            raise ValueError("no metadata line")
        meta = json.loads(head)
        return Entry(meta["id"], SourceKey.from_dict(meta["source"]), meta.get("model"), float(meta["created"]),
                     path, path.stat().st_size, meta)

    def count(self) -> int:
        with self._lock:
            return len(self._sizes)

    def total_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def room_for(self, count: int, nbytes: int) -> bool:
        """Would `count` more entries of `nbytes` in all stay within the limits? (An empty outbox always has
        room for one, so a single stream larger than the byte limit cannot block intake forever.)"""
        with self._lock:
            n, b = len(self._sizes), sum(self._sizes.values())
        if n == 0 and count <= 1:
            return True
        return (not self.max_count or n + count <= self.max_count) and (not self.max_bytes or b + nbytes <= self.max_bytes)

    def room(self, wanted: int, entry_bytes: int = 1024) -> int:
        """How many of `wanted` entries (about `entry_bytes` each) fit now; at least one when empty."""
        with self._lock:
            n, b = len(self._sizes), sum(self._sizes.values())
        fit = wanted
        if self.max_count:
            fit = min(fit, self.max_count - n)
        if self.max_bytes:
            fit = min(fit, (self.max_bytes - b) // max(1, entry_bytes))
        return max(fit, 1 if n == 0 else 0, 0)

    def full(self) -> bool:
        return not self.room_for(1, 0)

    # -- writing ------------------------------------------------------------------------------------------

    def put(self, items: list[tuple[bytes, SourceKey, str | None, dict[str, Any]]]) -> list[Entry]:
        """Commit (stream, source, model, extra metadata) items; durable when this returns. An item whose
        entry already exists is not written again. Raises `OutboxFull` (nothing written) or `OSError`
        (entries before the failing one are committed, and returned by `load` after a restart)."""
        sizes = [len(s) + 512 for s, *_ in items]
        if not self.room_for(len(items), sum(sizes)):
            raise OutboxFull(f"outbox full ({self.count()} entries, {self.total_bytes() / 2**20:.1f} MiB)")
        entries: list[Entry] = []
        now = time.time()
        try:
            for stream, source, model, extra in items:
                eid = entry_id(stream, source)
                path = self.pending_dir / f"{eid}{ENTRY_SUFFIX}"
                meta = {"id": eid, "source": source.as_dict(), "model": model, "created": now, **extra}
                data = json.dumps(meta).encode() + b"\n" + stream
                if not path.exists():
                    write_atomic(path, data, self.tmp_dir, sync_dir=False)
                with self._lock:
                    self._sizes[eid] = len(data)
                entries.append(Entry(eid, source, model, now, path, len(data), meta))
        finally:
            if entries:
                fsync_dir(self.pending_dir)  # one folder sync commits the whole batch
        return entries

    def remove(self, entry: Entry) -> None:
        """Drop an answered entry (its answer is already durable in the results)."""
        entry.path.unlink(missing_ok=True)
        fsync_dir(self.pending_dir)
        with self._lock:
            self._sizes.pop(entry.id, None)

    def reject(self, entry: Entry, stream: bytes, refusal: dict[str, Any]) -> Path:
        """Keep a refused stream and the server's message under rejected/ (the caller then logs and removes
        the entry). Returns the stream's path."""
        target = self.rejected_dir / f"{entry.id}.vcb"
        write_atomic(target, stream, self.tmp_dir, sync_dir=False)
        note = {"id": entry.id, "source": entry.source.as_dict(), "model": entry.model, **refusal}
        write_atomic(self.rejected_dir / f"{entry.id}.json", (json.dumps(note, indent=1) + "\n").encode(),
                     self.tmp_dir)
        return target


def spool_files(root: Path, files: list[Path], streams: list[bytes], model: str | None) -> list[Entry]:
    """Put already-encoded streams of `files` into the outbox at `root` (``send --outbox``), so that
    ``watch --outbox`` sends them later; the source key is taken now, so a watch of the same folder skips them."""
    items = []
    for file, stream in zip(files, streams):
        st = file.stat()
        source = SourceKey(os.path.abspath(file), st.st_size, st.st_mtime_ns)
        items.append((stream, source, None if file.suffix.lower() == ".vcb" else model, {"file": str(file)}))
    return Outbox(root).put(items)
