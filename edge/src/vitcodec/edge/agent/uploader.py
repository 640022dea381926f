"""The uploader: sends outbox entries to the server with bounded concurrency and never gives up on a
transient failure while the agent runs.

Why unary calls from a pool of worker threads (over the existing clients, gRPC or HTTP) rather than one
long-lived stream: every entry gets its own deadline, so a stalled connection costs one timeout per call in
flight and never holds the rest; gRPC multiplexes the calls over one HTTP/2 connection anyway.

Failures are sorted in two, by the rules of `vitcodec.wire`:
- permanent refusals (`is_permanent`: 400 corrupt stream, 404 unknown model, 409 model mismatch, 413 too large,
  and their gRPC codes INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED): the stream and the
  server's message go to ``rejected/``, a ``rejected`` line to the results, never retried;
- everything else (connection refused or reset, timeouts, 5xx, 429, UNAVAILABLE, a refused token): retried
  with capped exponential backoff and jitter (`Backoff`), per entry and, for server-wide trouble
  (`is_server_wide`), for all workers at once (one gate), so an outage does not become a storm of doomed calls.

While the server is unreachable, a prober asks its readiness (``GET /v2/health/ready`` or gRPC
``ServerReady``, both open without a token) every `PROBE_INTERVAL_S` on a fresh connection; when it turns from
not ready to ready, the gate opens and every waiting entry is due at once, so uploads resume within about a
second of the server being back instead of after the remaining backoff (up to ``--max-backoff``). Only that
transition opens the gate: a server that is up but answers 503 (overloaded) keeps its backoff.

Exactly once: an answer is appended (fsynced) to the results before its entry is removed; an entry whose id
is already answered is removed without being sent.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from vitcodec.edge.agent.outbox import Entry, Outbox, path_fields
from vitcodec.edge.agent.results import LedgerError, ResultsLog
from vitcodec.edge.agent.status import Reporter, now_iso
from vitcodec.wire import NO_ANSWER, Backoff, is_permanent, is_server_wide

# a fresh channel after this long without success (gRPC's own reconnect backoff grows to minutes)
RECONNECT_AFTER_S = 5.0
PROBE_INTERVAL_S = 1.0  # readiness probes while the server is unreachable


class Uploader:
    """Worker threads taking due entries from a heap ordered by next attempt time."""

    def __init__(self, outbox: Outbox, results: ResultsLog, reporter: Reporter, make_client: Callable[[], Any],
                 concurrency: int = 8, backoff: Backoff | None = None, top_k: int = 5) -> None:
        self.outbox, self.results, self.reporter = outbox, results, reporter
        self.make_client = make_client
        self.concurrency = max(1, concurrency)
        self.backoff = backoff or Backoff()
        self.top_k = top_k
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Entry]] = []
        self._queued: set[str] = set()
        self._failures: dict[str, int] = {}
        self._seq = itertools.count()
        self._stopping = False
        self._in_flight = 0
        self._gate = 0.0  # monotonic time before which no worker sends (server-wide trouble)
        self._gate_failures = 0
        self._last_ok = time.monotonic()
        self._client: Any = None
        self._client_born = 0.0
        self._retired: list[tuple[float, Any]] = []
        self._client_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._prober: threading.Thread | None = None
        self._down = False  # server-wide failures since the last success: the prober runs
        self._probe_saw_down = False  # the prober found the server not ready during this outage

    # -- queue --------------------------------------------------------------------------------------------

    def submit(self, entries: list[Entry]) -> None:
        with self._cond:
            for entry in entries:
                if entry.id not in self._queued:
                    self._queued.add(entry.id)
                    heapq.heappush(self._heap, (time.monotonic(), next(self._seq), entry))
            self._cond.notify_all()

    def _retry_later(self, entry: Entry, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), entry))
            self._cond.notify()

    def _done(self, entry: Entry) -> None:
        with self._cond:
            self._queued.discard(entry.id)
            self._failures.pop(entry.id, None)

    def _next(self) -> Entry | None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                wait = 0.5
                if self._heap:
                    due = max(self._heap[0][0], self._gate)
                    if due <= now:
                        entry = heapq.heappop(self._heap)[2]
                        self._in_flight += 1
                        self.reporter.set(in_flight=self._in_flight)
                        return entry
                    wait = min(wait, due - now)
                self._cond.wait(wait)
            return None

    def queued(self) -> int:
        with self._cond:
            return len(self._queued)

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self.concurrency):
            t = threading.Thread(target=self._work, name=f"vitcodec-upload-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self._prober = threading.Thread(target=self._probe_loop, name="vitcodec-probe", daemon=True)
        self._prober.start()

    def stop(self, timeout: float | None = None) -> None:
        """No new sends; wait for the calls in flight to finish (each is bounded by the client's timeout)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        if self._prober is not None:
            self._prober.join(1.0)  # a probe in progress is not waited out: its answer no longer matters
        with self._client_lock:
            for _, client in self._retired + ([(0.0, self._client)] if self._client is not None else []):
                _close(client)
            self._retired, self._client = [], None

    # -- one entry ----------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            entry = self._next()
            if entry is None:
                return
            try:
                self._process(entry)
            except Exception as exc:  # noqa: BLE001 - a worker must survive anything; the entry stays queued
                self.reporter.error("upload_error", f"{entry.source.path}: unexpected {type(exc).__name__}: {exc}")
                self._retry_later(entry, self.backoff.delay(self._bump(entry)))
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self.reporter.set(in_flight=self._in_flight)

    def _bump(self, entry: Entry) -> int:
        with self._cond:
            n = self._failures.get(entry.id, 0) + 1
            self._failures[entry.id] = n
            return n

    def _process(self, entry: Entry) -> None:
        if entry.id in self.results:  # answered before a crash, entry not yet removed: drop, do not resend
            try:
                self.results.flush_ledger()  # the answer's ledger line first (a failed write left it behind)
            except OSError as exc:
                self.reporter.error("results_error", f"{self.results.ledger_path}: cannot write the ledger "
                                    f"({exc.strerror or exc}); {entry.source.path} stays in the outbox")
                self._retry_later(entry, self.backoff.cap_s)
                return
            self._remove(entry)
            return
        try:
            stream = entry.read_stream()
        except FileNotFoundError:
            self._done(entry)
            return
        except (OSError, ValueError) as exc:
            self.reporter.error("outbox_error", f"{entry.path}: cannot read outbox entry ({exc})")
            self._retry_later(entry, self.backoff.cap_s)
            return
        from vitcodec.edge.client import ClientError

        try:
            result = self._get_client().classify(stream, top_k=self.top_k)
        except ClientError as exc:
            if is_permanent(exc.status):
                self._reject(entry, stream, exc)
            else:
                self._transient(entry, exc)
            return
        except Exception as exc:  # noqa: BLE001 - e.g. a channel closed under us while reconnecting
            self._transient(entry, ClientError(f"{type(exc).__name__}: {exc}", NO_ANSWER, "UNAVAILABLE", True))
            return
        self._succeeded()
        record = {"id": entry.id, **path_fields(entry.source.path, "file"), "source": entry.source.as_dict(),
                  "encoded_with": entry.model, **result.as_dict(), "attempts": self._failures.get(entry.id, 0) + 1,
                  "time": now_iso()}
        if entry.meta.get("requeued_from"):
            record["requeued_from"] = entry.meta["requeued_from"]
        if self._record(entry, record):
            self.reporter.add(sent=1)
            self.reporter.event("sent", f"{entry.source.path}: {record.get('label')} "
                                f"({record.get('confidence', 0):.3f})", "debug", id=entry.id,
                                file=entry.source.path, label=record.get("label"))

    def _record(self, entry: Entry, record: dict[str, Any]) -> bool:
        """Results first (durable), outbox entry second. False when the answer could not be written."""
        try:
            written = self.results.append(record)
        except LedgerError as exc:  # the answer is written (and counts); the entry waits for the ledger
            self.reporter.error("results_error", f"{exc.strerror}; {entry.source.path} is answered and stays in "
                                "the outbox until the ledger can be written")
            self._retry_later(entry, self.backoff.cap_s)
            return True
        except OSError as exc:
            self.reporter.error("results_error", f"{self.results.path}: cannot append the answer for "
                                f"{entry.source.path} ({exc.strerror or exc}); it stays in the outbox")
            self._retry_later(entry, self.backoff.cap_s)
            return False
        self._remove(entry)
        return written

    def _remove(self, entry: Entry) -> None:
        try:
            self.outbox.remove(entry)
        except OSError as exc:
            self.reporter.error("outbox_error", f"{entry.path}: cannot remove answered entry ({exc.strerror or exc})")
            self._retry_later(entry, self.backoff.cap_s)  # answered: the next try removes it without sending
            return
        self._done(entry)

    def _reject(self, entry: Entry, stream: bytes, exc: Any) -> None:
        refusal = {"status": exc.status, "code": exc.code, "error": exc.message, "time": now_iso()}
        try:
            kept = self.outbox.reject(entry, stream, refusal)
        except OSError as err:
            self.reporter.error("outbox_error", f"{entry.source.path}: cannot write rejected/ ({err.strerror or err})")
            self._retry_later(entry, self.backoff.cap_s)
            return
        record = {"id": entry.id, **path_fields(entry.source.path, "file"), "source": entry.source.as_dict(),
                  "encoded_with": entry.model, "rejected": True, "bytes": len(stream), "rejected_path": str(kept),
                  **refusal}
        if entry.meta.get("requeued_from"):
            record["requeued_from"] = entry.meta["requeued_from"]
        if self._record(entry, record):
            self.reporter.add(rejected=1)
            self.reporter.event("rejected", f"{entry.source.path}: refused by the server ({exc.status} {exc.code}: "
                                f"{exc.message}); kept in {kept}", "error", id=entry.id, file=entry.source.path,
                                status=exc.status, code=exc.code, server_message=exc.message)

    # -- transient failures and the gate ------------------------------------------------------------------

    def _transient(self, entry: Entry, exc: Any) -> None:
        failures = self._bump(entry)
        now = time.monotonic()
        if is_server_wide(exc.status, exc.code):
            with self._cond:
                if now >= self._gate:
                    self._gate_failures += 1
                    self._gate = now + self.backoff.delay(self._gate_failures)
                if not self._down:
                    self._down, self._probe_saw_down = True, False
                    self._cond.notify_all()  # wakes the prober
            first = False
            with self.reporter.lock:
                if self.reporter.counters.server_down_since is None:
                    self.reporter.set(server_down_since=now)
                    first = True
            if first:
                self.reporter.event("server_unreachable", f"server unreachable ({exc.code}: {exc.message}); "
                                    "retrying with backoff, images stay in the outbox", "warning")
            self._maybe_reconnect(now)
        elif failures == 1 or failures % 10 == 0:
            self.reporter.event("retry", f"{entry.source.path}: {exc.status} {exc.code}: {exc.message}; "
                                f"retrying (attempt {failures})", "warning", id=entry.id)
        self._retry_later(entry, self.backoff.delay(failures))

    def _succeeded(self) -> None:
        now = time.monotonic()
        with self._cond:
            self._gate_failures = 0
            self._last_ok = now
            self._down = False
        down = None
        with self.reporter.lock:
            if self.reporter.counters.server_down_since is not None:
                down = now - self.reporter.counters.server_down_since
                self.reporter.set(server_down_since=None)
        if down is not None:
            self.reporter.event("server_reachable", f"server reachable again after {down:.1f} s")

    # -- readiness probes while the server is unreachable -------------------------------------------------

    def _probe_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._down:
                    self._cond.wait(PROBE_INTERVAL_S)
                if self._stopping:
                    return
            ready = self._probe()
            with self._cond:
                if self._stopping:
                    return
                if self._down and not ready:
                    self._probe_saw_down = True
                elif self._down and self._probe_saw_down:
                    self._release()
                deadline = time.monotonic() + PROBE_INTERVAL_S
                while not self._stopping and (wait := deadline - time.monotonic()) > 0:
                    self._cond.wait(wait)

    def _probe(self) -> bool:
        """Is the server ready? Asked on a fresh connection, so no reconnect backoff of a broken one delays it."""
        client = None
        try:
            client = self.make_client()
            return bool(client.ready())
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False
        finally:
            if client is not None:
                _close(client)

    def _release(self) -> None:
        """The server is ready again (called holding `_cond`): open the gate and make every entry due now,
        on a fresh client (the old connection may be waiting out gRPC's reconnect backoff)."""
        now = time.monotonic()
        self._down, self._probe_saw_down = False, False
        self._gate, self._gate_failures = 0.0, 0
        self._heap = [(min(due, now), seq, entry) for due, seq, entry in self._heap]
        heapq.heapify(self._heap)
        with self._client_lock:
            if self._client is not None:
                self._retired.append((now, self._client))
                self._client = None
        self._cond.notify_all()

    def _get_client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self.make_client()
                self._client_born = time.monotonic()
            return self._client

    def _maybe_reconnect(self, now: float) -> None:
        """Swap in a fresh client after a long failure streak; the old one is closed once its calls are done."""
        with self._client_lock:
            if (self._client is None or now - self._last_ok < RECONNECT_AFTER_S
                    or now - self._client_born < RECONNECT_AFTER_S):
                return
            self._retired.append((now, self._client))
            self._client = None
            keep = []
            for retired_at, client in self._retired:
                if now - retired_at > 120.0:
                    _close(client)
                else:
                    keep.append((retired_at, client))
            self._retired = keep


def _close(client: Any) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - closing a broken connection must not fail shutdown
        pass
