"""The results file: one JSON line per answered image, appended once and fsynced before the outbox entry is
removed; and the ledger, the agent's own record of what was answered.

Why this order: if the agent dies between the two steps, the entry survives but its id is already recorded,
so the restart removes the entry instead of sending it again (`ResultsLog.answered`). A line is written
with a single ``write`` on an ``O_APPEND`` descriptor, so a killed process never leaves half a line; a full
disk can (a short write): the file is then truncated back to where the line began, so the file stays
readable line by line (jq, pandas) and the answer is written whole when it is tried again. A power cut can
still leave a torn tail: loading skips lines that do not parse and the next append starts on a new line.

Why a ledger (``OUTBOX/ledger.jsonl``, one short line per answer: id and source): the results file belongs
to the device owner, who may rotate it (logrotate), move it away or delete it while the agent runs. Before
each append the open file is compared (device, inode) with the path; when they differ the path is opened
anew (one ``results_reopened`` line), so answers keep landing in a file someone can read. What was answered
is read from the ledger as well as from the results file, so a restart after a rotation does not send the
images of the rotated file again. Order: results line, then ledger line, then the outbox entry goes; at
start, answers found in the results file but not in the ledger (a crash between the two) are added to it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitcodec.edge.agent.outbox import SourceKey


class LedgerError(OSError):
    """The answer is in the results file, but the ledger could not be written: the entry must stay in the
    outbox until `ResultsLog.flush_ledger` succeeds (it is not sent again)."""


class AppendFile:
    """An ``O_APPEND`` file written one whole line at a time: a failed or short write is cut back to where the
    line began; a file replaced or deleted under us (rotation) is opened again at its path."""

    def __init__(self, path: Path, needs_newline: bool = False,
                 on_replaced: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.on_replaced = on_replaced
        self._needs_newline = needs_newline
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _replaced(self) -> str | None:
        """How the path lost our file ("deleted", "replaced"), or None while it is still ours."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return "deleted"
        except OSError:
            return None  # cannot tell (a folder we cannot search): keep writing where we are
        ours = os.fstat(self._fd)
        return None if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino) else "replaced"

    def _reopen_if_replaced(self) -> None:
        how = self._replaced()
        if how is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.close(self._fd)
        self._fd = fd
        self._needs_newline = _ends_mid_line(fd)
        if self.on_replaced is not None:
            self.on_replaced(how)

    def append(self, data: bytes, sync: bool = True) -> None:
        """Write `data` (whole lines) and fsync; on any failure the file is as it was before (OSError)."""
        self._reopen_if_replaced()
        if self._needs_newline:
            data = b"\n" + data
        start = _size(self._fd)
        try:
            written = os.write(self._fd, data)
            if written != len(data):  # a short write: the disk filled up part way through the line
                raise OSError(errno.ENOSPC, f"No space left on device (short write: {written} of {len(data)} "
                              "bytes)")
            if sync:
                os.fsync(self._fd)
        except OSError:
            self._cut_back(start)
            raise
        self._needs_newline = False

    def _cut_back(self, start: int | None) -> None:
        """Remove a partly written line (a torn line would stop every line-by-line reader of the file)."""
        if start is None:
            return  # not a regular file (/dev/full): nothing to cut
        try:
            if _size(self._fd) != start:
                os.ftruncate(self._fd, start)
        except OSError:
            self._needs_newline = True  # cannot cut: at least start the next line on a line of its own

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def _size(fd: int) -> int | None:
    st = os.fstat(fd)
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _ends_mid_line(fd: int) -> bool:
    size = _size(fd)
    if not size:
        return False
    return os.pread(fd, 1, size - 1) != b"\n"


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], int, bool]:
    """Parsed records, the number of lines that did not parse, and whether the file ends mid-line."""
    data = path.read_bytes()
    records, damaged = [], 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "id" not in record:
                raise ValueError("not an answer")
            records.append(record)
        except ValueError:
            damaged += 1
    return records, damaged, bool(data) and not data.endswith(b"\n")


def ledger_line(record: dict[str, Any]) -> bytes:
    """What the ledger keeps of an answer: enough to recognise its entry and its source."""
    short: dict[str, Any] = {"id": record["id"]}
    if isinstance(record.get("source"), dict):
        short["source"] = record["source"]
    if record.get("rejected"):
        short["rejected"] = True
    return (json.dumps(short, separators=(",", ":")) + "\n").encode()


class ResultsLog:
    """Append-only answers with an in-memory index of entry ids and source files already answered (from the
    results file and, when given, the ledger)."""

    def __init__(self, path: Path, ledger: Path | None = None,
                 on_event: Callable[[str, str], None] | None = None) -> None:
        self.path = Path(path)
        self.ledger_path = Path(ledger) if ledger is not None else None
        self.on_event = on_event
        self.answered: set[str] = set()
        self.sources: set[SourceKey] = set()
        self.contents: set[tuple[str, str]] = set()  # (path, sha256) of sources answered
        self.sent = 0  # answers recorded (before this run, then counting)
        self.rejected = 0
        self.damaged_lines = 0
        self.ledger_damaged_lines = 0
        self._lock = threading.Lock()
        self._ledger_backlog: list[bytes] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        results_tail = False
        from_results: list[dict[str, Any]] = []
        if self.path.is_file():  # (a character device such as /dev/full is written to, never read)
            from_results, self.damaged_lines, results_tail = _read_lines(self.path)
        self._ledger: AppendFile | None = None
        if self.ledger_path is not None:
            ledger_tail = False
            if self.ledger_path.is_file():
                records, self.ledger_damaged_lines, ledger_tail = _read_lines(self.ledger_path)
                for record in records:
                    self._index(record)
            self.ledger_path.parent.mkdir(parents=True, exist_ok=True)
            self._ledger = AppendFile(self.ledger_path, ledger_tail, self._ledger_replaced)
            missing = [r for r in from_results if str(r["id"]) not in self.answered]
            for record in missing:
                self._index(record)
            if missing:  # answers of an older version, or a crash between results line and ledger line
                self._ledger.append(b"".join(ledger_line(r) for r in missing))
        else:
            for record in from_results:
                self._index(record)
        self._results = AppendFile(self.path, results_tail, self._results_replaced)

    def _results_replaced(self, how: str) -> None:
        if self.on_event is not None:
            self.on_event("results_reopened", f"{self.path}: the results file was {how} while the agent ran "
                          "(rotated?); answers now go to a new file at that path")

    def _ledger_replaced(self, how: str) -> None:
        if self.on_event is not None:
            self.on_event("ledger_reopened", f"{self.ledger_path}: the ledger was {how} while the agent ran; "
                          "a new one is started (answers before this are known until the agent restarts)")

    def _index(self, record: dict[str, Any]) -> None:
        rid = str(record["id"])
        if rid in self.answered:
            return
        self.answered.add(rid)
        if isinstance(record.get("source"), dict):
            try:
                key = SourceKey.from_dict(record["source"])
            except (KeyError, TypeError, ValueError):
                key = None
            if key is not None:
                self.sources.add(key)
                if key.sha256:
                    self.contents.add((key.path, key.sha256))
        if record.get("rejected"):
            self.rejected += 1
        else:
            self.sent += 1

    def __contains__(self, entry_id: str) -> bool:
        with self._lock:
            return entry_id in self.answered

    def knows_source(self, key: SourceKey) -> bool:
        with self._lock:
            return key in self.sources

    def knows_content(self, path: str, sha256: str) -> bool:
        """Was this file, with these bytes, answered already (whatever its mtime now)?"""
        with self._lock:
            return (path, sha256) in self.contents

    def append(self, record: dict[str, Any]) -> bool:
        """Write one answer durably; False (nothing written) when its id is already answered. OSError when the
        results file cannot take it (nothing written); `LedgerError` when the answer is written but the
        ledger is not (the answer counts; keep the entry until `flush_ledger` succeeds)."""
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if record["id"] in self.answered:
                return False
            self._results.append(line)
            self._index(record)
            if self._ledger is not None:
                self._ledger_backlog.append(ledger_line(record))
                try:
                    self._flush_ledger_locked()
                except OSError as exc:
                    raise LedgerError(exc.errno, f"cannot write the ledger {self.ledger_path} "
                                      f"({exc.strerror or exc})") from None
        return True

    def flush_ledger(self) -> None:
        """Write ledger lines left over from a failed write (OSError while it still cannot)."""
        with self._lock:
            self._flush_ledger_locked()

    def _flush_ledger_locked(self) -> None:
        if self._ledger is not None and self._ledger_backlog:
            self._ledger.append(b"".join(self._ledger_backlog))
            self._ledger_backlog.clear()

    def close(self) -> None:
        with self._lock:
            try:
                self._flush_ledger_locked()
            except OSError:
                pass  # the entries concerned are still in the outbox; the next start reconciles
            self._results.close()
            if self._ledger is not None:
                self._ledger.close()
