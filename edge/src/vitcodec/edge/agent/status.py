"""What the agent tells its operator: counters, one-line events, and a live status line.

Three renderings of the same events, because the agent runs in three places: a terminal (rich: event lines
scroll above a live status line), a service manager or container (plain lines, journald/docker add the
time), and log shippers (``--json``: one JSON object per line with ``event`` and fields). Every problem is
one line naming the file and the cause; none is a traceback.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text


@dataclass
class Counters:
    """Running totals; `sent` and `rejected` include the answers already in the results file at start."""

    pending: int = 0
    pending_bytes: int = 0
    in_flight: int = 0
    encoded: int = 0
    sent: int = 0
    rejected: int = 0
    unreadable: int = 0
    errors: int = 0
    intake_paused: bool = False
    server_down_since: float | None = None

    def snapshot(self) -> dict[str, Any]:
        d = asdict(self)
        down = d.pop("server_down_since")
        d["server_down_s"] = None if down is None else round(time.monotonic() - down, 1)
        return d


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Reporter:
    """Thread-safe events and counters. `live()` shows the status line when stderr is a terminal."""

    def __init__(self, as_json: bool = False, stream: TextIO | None = None, status_interval_s: float = 10.0,
                 verbose: bool = False) -> None:
        self.as_json, self.verbose = as_json, verbose
        self.counters = Counters()
        self.lock = threading.RLock()
        self._stream = stream or sys.stderr
        self._console = Console(file=self._stream, highlight=False, soft_wrap=True)
        self.interactive = self._console.is_terminal and not as_json
        self.status_interval_s = status_interval_s
        self._live: Live | None = None
        self._last_status = 0.0

    # -- counters -----------------------------------------------------------------------------------------

    def add(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                setattr(self.counters, name, getattr(self.counters, name) + delta)

    def set(self, **values: Any) -> None:
        with self.lock:
            for name, value in values.items():
                setattr(self.counters, name, value)

    # -- events -------------------------------------------------------------------------------------------

    def event(self, event: str, message: str, level: str = "info", **fields: Any) -> None:
        """One line: ``--json`` object, or ``level: message`` (errors and warnings stand out in a terminal).
        ``debug`` events (one per image sent) only with `verbose`."""
        if level == "debug" and not self.verbose:
            return
        with self.lock:
            if self.as_json:
                record = {"time": now_iso(), "level": level, "event": event, "message": message, **fields}
                self._stream.write(json.dumps(record, default=str) + "\n")
                self._stream.flush()
                return
            colour = {"error": "red", "warning": "yellow"}.get(level)
            prefix = f"[{colour}]{level}:[/{colour}] " if colour else ""
            self._console.print(prefix + escape(message), soft_wrap=True)

    def error(self, event: str, message: str, **fields: Any) -> None:
        self.add(errors=1)
        self.event(event, message, "error", **fields)

    # -- the status line ----------------------------------------------------------------------------------

    def status_text(self) -> str:
        with self.lock:
            c = self.counters
            parts = [f"pending {c.pending} ({c.pending_bytes / 1024:.1f} KiB)", f"in flight {c.in_flight}",
                     f"sent {c.sent}", f"rejected {c.rejected}"]
            if c.unreadable:
                parts.append(f"unreadable {c.unreadable}")
            if c.server_down_since is not None:
                parts.append(f"server unreachable for {time.monotonic() - c.server_down_since:.0f} s (retrying)")
            if c.intake_paused:
                parts.append("intake paused: outbox full")
        return " · ".join(parts)

    def tick(self) -> None:
        """Refresh the live line, or write a ``status`` event every `status_interval_s` when not a terminal."""
        if self._live is not None:
            self._live.update(Text(self.status_text(), style="bold"))
            return
        now = time.monotonic()
        if self.status_interval_s > 0 and now - self._last_status >= self.status_interval_s:
            self._last_status = now
            self.event("status", self.status_text(), **self.counters.snapshot())

    def __enter__(self) -> Reporter:
        if self.interactive:
            self._live = Live(Text(self.status_text()), console=self._console, refresh_per_second=4,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(Text(self.status_text(), style="bold"))
            self._live.__exit__(*exc)
            self._live = None
