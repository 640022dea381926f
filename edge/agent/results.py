"""The results file: one JSON line per answered image, appended once and fsynced before the outbox entry is
removed.

Why this order: if the agent dies between the two steps, the entry survives but its id is already in this
file, so the restart removes the entry instead of sending it again (`ResultsLog.answered`). A line is written
with a single ``write`` on an ``O_APPEND`` descriptor, so a killed process never leaves half a line; a power cut
can (the file system may keep a torn tail), so loading skips lines that do not parse and the next append
starts on a new line.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitcodec.edge.agent.outbox import SourceKey


@dataclass
class ResultsLog:
    """Append-only answers with an in-memory index of entry ids and source files already answered."""

    path: Path
    answered: set[str] = field(default_factory=set)
    sources: set[SourceKey] = field(default_factory=set)
    sent: int = 0  # answers in the file (before this run, then counting)
    rejected: int = 0
    damaged_lines: int = 0

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._lock = threading.Lock()
        self._needs_newline = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():  # (a character device such as /dev/full is written to, never read)
            self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _load(self) -> None:
        data = self.path.read_bytes()
        self._needs_newline = bool(data) and not data.endswith(b"\n")
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self._index(record)
            except (ValueError, KeyError, TypeError):
                self.damaged_lines += 1

    def _index(self, record: dict[str, Any]) -> None:
        self.answered.add(str(record["id"]))
        if isinstance(record.get("source"), dict):
            self.sources.add(SourceKey.from_dict(record["source"]))
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

    def append(self, record: dict[str, Any]) -> bool:
        """Write one answer durably; False (nothing written) when its id is already answered."""
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if record["id"] in self.answered:
                return False
            if self._needs_newline:
                line = b"\n" + line
            written = os.write(self._fd, line)
            if written != len(line):  # a short write (disk full): the caller sees an error and retries later
                self._needs_newline = True
                raise OSError(28, "short write to the results file")
            os.fsync(self._fd)
            self._needs_newline = False
            self._index(record)
        return True

    def close(self) -> None:
        os.close(self._fd)
