"""The outbox: bitstreams waiting to be answered, one file per entry, written so that a crash or power cut at
any instant leaves either the whole entry or none of it.

Layout under the outbox folder::

    pending/<id>.entry     JSON metadata line, b"\\n", then the bitstream (one file: one atomic rename)
    tmp/                   entries being written (removed at start: a crash mid-write leaves only these)
    rejected/<id>.vcb      streams the server refused for good, next to <id>.json holding its message
    ledger.jsonl           one line per answered entry (id, source): the exactly-once record (`results`),
                           kept here because the results file may be rotated or deleted under the agent

Why one file per entry: the rename is the commit point, so no index file can disagree with the entries. The
entry id (`entry_id`) is a hash of the bitstream, the source path and its mtime: the same unchanged file always
gets the same id, which is what lets `results` recognise an answer already given.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENTRY_SUFFIX = ".entry"
LEDGER_NAME = "ledger.jsonl"


class OutboxFull(Exception):
    """Adding these entries would pass the count or size limit; nothing was written."""


class OutboxWriteError(OSError):
    """Writing a batch failed part way (disk full, I/O error): `committed` holds the entries that were written
    and made durable before the failure (the caller must still send them); the rest were not written."""

    def __init__(self, exc: OSError, committed: list[Entry]) -> None:
        super().__init__(exc.errno, exc.strerror or str(exc))
        self.committed = committed


def path_fields(path: str, name: str = "path") -> dict[str, str]:
    """A file name for a JSON record, without loss: `name` is always valid Unicode (undecodable bytes shown as
    U+FFFD, so jq and pandas read it); a name that is not UTF-8 also gets `name`_b64, its exact bytes."""
    raw = os.fsencode(path)
    try:
        return {name: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {name: raw.decode("utf-8", "replace"), f"{name}_b64": base64.b64encode(raw).decode("ascii")}


def path_from_fields(d: dict[str, Any], name: str = "path") -> str:
    """The file name `path_fields` stored (exact bytes when it carried them)."""
    if d.get(f"{name}_b64"):
        return os.fsdecode(base64.b64decode(d[f"{name}_b64"]))
    return str(d[name])


@dataclass(frozen=True)
class SourceKey:
    """A source file as it was when encoded: a changed file (new size or mtime) is a new version. `sha256`
    (of the file's bytes) is carried along but not part of the identity: it tells intake that a file whose
    mtime changed (``touch``) still holds an image already sent."""

    path: str
    size: int
    mtime_ns: int
    sha256: str | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {**path_fields(self.path), "size": self.size, "mtime_ns": self.mtime_ns}
        if self.sha256:
            d["sha256"] = self.sha256
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceKey:
        return cls(path_from_fields(d), int(d["size"]), int(d["mtime_ns"]), d.get("sha256") or None)


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
        self.ledger_path = self.root / LEDGER_NAME
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
        entries, problems = self._read_all(self.pending_dir.glob(f"*{ENTRY_SUFFIX}"))
        with self._lock:
            self._sizes = {e.id: e.size for e in entries}
        return entries, problems

    def adopt(self) -> list[Entry]:
        """Entries that appeared in pending/ behind this process's back (``vitcodec-edge requeue``, ``send
        --outbox`` while ``watch`` runs), now counted; damaged ones are left for `load` to report."""
        with self._lock:
            known = set(self._sizes)
        fresh = [p for p in self.pending_dir.glob(f"*{ENTRY_SUFFIX}") if p.name[:-len(ENTRY_SUFFIX)] not in known]
        entries, _ = self._read_all(fresh)
        with self._lock:
            entries = [e for e in entries if e.id not in self._sizes]
            for e in entries:
                self._sizes[e.id] = e.size
        return entries

    def _read_all(self, paths: Any) -> tuple[list[Entry], list[str]]:
        entries, problems = [], []
        for path in paths:
            try:
                entry = self._read_entry(path)
            except FileNotFoundError:
                continue  # sent and removed meanwhile
            except (OSError, ValueError, KeyError) as exc:
                problems.append(f"{path}: damaged outbox entry ({exc}); left in place")
                continue
            entries.append(entry)
        entries.sort(key=lambda e: (e.created, e.id))
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
        return ((not self.max_count or n + count <= self.max_count)
                and (not self.max_bytes or b + nbytes <= self.max_bytes))

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
        """Commit (stream, source, model, extra metadata) items in order; durable when this returns. An item
        whose entry already exists is not written again. Raises `OutboxFull` (nothing written) or
        `OutboxWriteError` (an OSError: disk full, I/O error) whose `committed` are the entries written
        before the failing one, durable and to be sent like any other; the rest were not written."""
        sizes = [len(s) + 512 for s, *_ in items]
        if not self.room_for(len(items), sum(sizes)):
            raise OutboxFull(f"outbox full ({self.count()} entries, {self.total_bytes() / 2**20:.1f} MiB)")
        entries: list[Entry] = []
        failure: OSError | None = None
        now = time.time()
        for stream, source, model, extra in items:
            eid = entry_id(stream, source)
            path = self.pending_dir / f"{eid}{ENTRY_SUFFIX}"
            meta = {"id": eid, "source": source.as_dict(), "model": model, "created": now, **extra}
            data = json.dumps(meta).encode() + b"\n" + stream
            try:
                if not path.exists():
                    write_atomic(path, data, self.tmp_dir, sync_dir=False)
            except OSError as exc:
                failure = exc
                break
            with self._lock:
                self._sizes[eid] = len(data)
            entries.append(Entry(eid, source, model, now, path, len(data), meta))
        if entries:
            try:
                fsync_dir(self.pending_dir)  # one folder sync commits the whole batch
            except OSError as exc:  # not known to be durable: the caller tries the batch again (files are kept)
                raise OutboxWriteError(exc, []) from None
        if failure is not None:
            raise OutboxWriteError(failure, entries) from None
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
        if entry.meta.get("file"):
            note["file"] = entry.meta["file"]
        write_atomic(self.rejected_dir / f"{entry.id}.json", (json.dumps(note, indent=1) + "\n").encode(),
                     self.tmp_dir)
        return target

    def rejected(self) -> list[str]:
        """Ids of the streams kept in rejected/ (oldest first)."""
        notes = sorted(self.rejected_dir.glob("*.json"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.stem for p in notes if (self.rejected_dir / f"{p.stem}.vcb").is_file()]

    def requeue(self, ids: list[str]) -> list[Entry]:
        """Move refused streams back to pending/ (after the server was fixed: model deployed, limit raised),
        each under a new id derived from the old one (`requeue_id`), since the old id is answered (refused)
        in the results and would be skipped. Crash-safe: the pending entry is durable before rejected/ loses
        the stream, and running this again after a crash gives the same id (never two entries)."""
        entries = []
        for old in ids:
            note_path, stream_path = self.rejected_dir / f"{old}.json", self.rejected_dir / f"{old}.vcb"
            note = json.loads(note_path.read_text())
            stream = stream_path.read_bytes()
            source = SourceKey.from_dict(note["source"])
            eid = requeue_id(old)
            path = self.pending_dir / f"{eid}{ENTRY_SUFFIX}"
            meta = {"id": eid, "source": source.as_dict(), "model": note.get("model"), "created": time.time(),
                    "requeued_from": old}
            if note.get("file"):
                meta["file"] = note["file"]
            data = json.dumps(meta).encode() + b"\n" + stream
            if not path.exists():
                write_atomic(path, data, self.tmp_dir)
            stream_path.unlink(missing_ok=True)
            note_path.unlink(missing_ok=True)
            fsync_dir(self.rejected_dir)
            with self._lock:
                self._sizes[eid] = len(data)
            entries.append(Entry(eid, source, meta["model"], meta["created"], path, len(data), meta))
        return entries


def requeue_id(old_id: str) -> str:
    """The id of a requeued refusal: new (the old one is answered), and the same if requeue runs twice."""
    return hashlib.sha256(f"{old_id}:requeue".encode()).hexdigest()[:32]


def spool_files(root: Path, files: list[Path], streams: list[bytes], model: str | None) -> list[Entry]:
    """Put already-encoded streams of `files` into the outbox at `root` (``send --outbox``), so that
    ``watch --outbox`` sends them later; the source key is taken now, so a watch of the same folder skips them."""
    items = []
    for file, stream in zip(files, streams):
        st = file.stat()
        source = SourceKey(os.path.abspath(file), st.st_size, st.st_mtime_ns)
        items.append((stream, source, None if file.suffix.lower() == ".vcb" else model, {"file": str(file)}))
    return Outbox(root).put(items)
