"""The agent's main loop: recover the outbox, run intake and the uploader side by side, stop cleanly.

Start-up order is what makes restarts safe: the results file is read first, then every outbox entry already
answered there is removed (the crash fell between "answer written" and "entry removed"), and only the rest is
queued for upload. Intake skips any source file whose exact version (path, size, mtime) is already in the
outbox or the results, so a kept source is never encoded or answered twice; with ``--source keep`` a file
whose mtime changed but whose bytes did not (``touch``, a copy that keeps the content) is recognised by its
SHA-256 and not sent again either. What was answered comes from the results file and the outbox's ledger
(`results`), so rotating or deleting the results file does not make a restart send anything again.

A batch the outbox could only partly write (disk full) is not lost in between: the entries that were written
are queued for upload like any other (their uploads free the space), the rest stay in the watched folder and
are tried again as soon as the outbox shrinks or after ``--max-backoff``.

Stopping (SIGINT/SIGTERM): intake finishes the batch it is encoding, the uploader finishes the calls in
flight (each bounded by ``--timeout``) and starts no new one; whatever is left stays in the outbox for the
next start. A second signal exits at once; the outbox and results stay consistent because every write to
them is atomic.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vitcodec.edge.agent.intake import (
    Candidate,
    Encoded,
    SourcePolicy,
    StabilityTracker,
    Unreadable,
    apply_policy,
    content_hash,
    encode_batch,
)
from vitcodec.edge.agent.outbox import Outbox, OutboxFull, SourceKey
from vitcodec.edge.agent.results import ResultsLog
from vitcodec.edge.agent.status import Reporter
from vitcodec.edge.agent.uploader import Uploader
from vitcodec.wire import Backoff


class AgentSetupError(Exception):
    """Bad arguments or an unusable outbox, results file or model: the agent does not start (exit 2)."""


@dataclass
class AgentConfig:
    watch: list[Path]
    server: str
    outbox: Path
    results: Path
    model: str | None = None
    token: str | None = None
    timeout_s: float = 10.0
    concurrency: int = 8
    batch_size: int = 32
    poll_s: float = 0.5
    settle_s: float = 1.0
    source_policy: SourcePolicy = SourcePolicy.keep
    done_dir: Path | None = None
    max_pending: int = 10_000
    max_outbox_bytes: int = 256 * 2**20
    backoff: Backoff = field(default_factory=Backoff)
    top_k: int = 5
    threads: int | None = None
    tls: Any = None  # vitcodec.edge.client.TlsOptions (CA, client certificate) for https:// and grpcs://
    unreadable_after_s: float = 10.0  # a file that does not decode is an error once unchanged this long


ADOPT_EVERY_S = 5.0  # how often pending/ is looked at for entries written by other commands (requeue, send)


class Agent:
    def __init__(self, config: AgentConfig, reporter: Reporter) -> None:
        self.cfg = config
        self.reporter = reporter
        self.stop = threading.Event()
        self.roots = [Path(os.path.abspath(p)) for p in config.watch]
        for root in self.roots:  # a missing folder is waited for (an SD card mounted late); a file is a mistake
            if root.exists() and not root.is_dir():
                raise AgentSetupError(f"{root}: not a folder")
        if config.source_policy is SourcePolicy.move:
            self.done_dir = Path(os.path.abspath(config.done_dir or Path(config.outbox) / "done"))
        else:
            self.done_dir = None
        self.model_name: str | None = None
        self._handled: set[SourceKey] = set()
        self._spooled_before: set[SourceKey] = set()
        self._known_content: set[tuple[str, str]] = set()  # (path, sha256) spooled in this run or before
        self._unreadable: dict[str, tuple[SourceKey, int]] = {}  # path: (version, ctime) reported
        self._deferred: dict[str, tuple[SourceKey, str]] = {}  # path: (version, message) not decodable yet
        self._unlistable: set[str] = set()  # sub-folders that could not be listed at the last scan
        self._missing: set[Path] = set()
        self._paused = False
        self._outbox_failing = False
        try:
            self.outbox = Outbox(Path(config.outbox), config.max_pending, config.max_outbox_bytes)
            if self.done_dir is not None:
                self.done_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AgentSetupError(f"{config.outbox}: cannot use the outbox ({exc.strerror or exc})") from None
        try:
            self.results = ResultsLog(Path(config.results), self.outbox.ledger_path,
                                      on_event=lambda event, message: reporter.event(event, message, "warning"))
        except OSError as exc:
            if exc.filename and Path(exc.filename) == self.outbox.ledger_path:
                raise AgentSetupError(f"{config.outbox}: cannot use the outbox ({exc.strerror or exc})") from None
            raise AgentSetupError(f"{config.results}: cannot open the results file ({exc.strerror or exc})") from None
        self.encoder: Any = None
        if self.roots:
            from vitcodec.edge.images import EdgeInputError, load_encoder

            try:
                self.encoder = load_encoder(config.model, config.threads)
            except EdgeInputError as exc:
                raise AgentSetupError(str(exc)) from None
            self.model_name = self.encoder.package.name
        from vitcodec.edge.client import RetryPolicy, connect

        def make_client() -> Any:
            return connect(config.server, token=config.token, timeout=config.timeout_s,
                           retry=RetryPolicy(attempts=1),  # retries are the uploader's (forever, with backoff)
                           tls=config.tls)

        try:
            make_client().close()  # a bad URL or certificate file fails here, before anything starts
        except ValueError as exc:
            raise AgentSetupError(str(exc)) from None
        self.uploader = Uploader(self.outbox, self.results, reporter, make_client, config.concurrency,
                                 config.backoff, config.top_k)

    # -- start-up recovery --------------------------------------------------------------------------------

    def recover(self) -> None:
        entries, problems = self.outbox.load()
        for message in problems:
            self.reporter.error("outbox_error", message)
        if self.results.damaged_lines:
            self.reporter.event("results_damaged", f"{self.results.path}: {self.results.damaged_lines} damaged "
                                "line(s) skipped (a power cut mid-write?)", "warning")
        if self.results.ledger_damaged_lines:
            self.reporter.event("results_damaged", f"{self.outbox.ledger_path}: "
                                f"{self.results.ledger_damaged_lines} damaged line(s) skipped", "warning")
        answered = [e for e in entries if e.id in self.results]
        for entry in answered:
            self.outbox.remove(entry)
        todo = [e for e in entries if e.id not in self.results]
        self._spooled_before = {e.source for e in todo}
        self._known_content = {(e.source.path, e.source.sha256) for e in todo if e.source.sha256}
        self.reporter.set(sent=self.results.sent, rejected=self.results.rejected)
        self.reporter.event("start", f"watching {len(self.roots)} folder(s), outbox {self.outbox.root} "
                            f"({len(todo)} pending, {len(answered)} already answered and removed), results "
                            f"{self.results.path} ({self.results.sent} sent, {self.results.rejected} rejected "
                            f"so far), server {self.cfg.server}", pending=len(todo), recovered=len(answered))
        self.uploader.submit(todo)

    # -- intake -------------------------------------------------------------------------------------------

    def _skip(self, cand: Candidate) -> bool:
        key = cand.key
        reported = self._unreadable.get(key.path)
        if reported is not None:
            if reported == (key, cand.ctime_ns):
                return True
            del self._unreadable[key.path]  # changed, or its permissions did: try it again
        deferred = self._deferred.get(key.path)
        if deferred is not None:
            if deferred[0] != key:
                del self._deferred[key.path]  # the writer went on: take the new version as usual
            else:
                if time.time_ns() - key.mtime_ns >= self.cfg.unreadable_after_s * 1e9:
                    del self._deferred[key.path]  # unchanged for long: really damaged
                    self._report_unreadable(cand, deferred[1])
                return True
        if key in self._handled:
            return True
        if key in self._spooled_before or self.results.knows_source(key):
            # spooled or answered before a restart; a source still here means its policy was not yet applied
            if self.cfg.source_policy is not SourcePolicy.keep:
                self._after_spool(cand)
            self._handled.add(key)
            return True
        return False

    def _after_spool(self, cand: Candidate) -> None:
        problem = apply_policy(self.cfg.source_policy, cand, self.done_dir)
        if problem:
            self.reporter.error("source_error", problem, file=str(cand.path))

    def _set_paused(self, paused: bool) -> None:
        if paused == self._paused:
            return
        self._paused = paused
        self.reporter.set(intake_paused=paused)
        if paused:
            self.reporter.event("intake_paused", f"outbox full ({self.outbox.count()} entries, "
                                f"{self.outbox.total_bytes() / 2**20:.1f} MiB; limits {self.cfg.max_pending} "
                                f"entries, {self.cfg.max_outbox_bytes / 2**20:.0f} MiB): intake paused, new "
                                "images wait in the watched folders", "warning")
        else:
            self.reporter.event("intake_resumed", "outbox has room again: intake resumed")

    def _room(self, wanted: int) -> int:
        """How many ready files to encode now: at most `wanted`, at least 1 (waiting, paused, while full);
        0 when stopping."""
        while True:
            count = self.outbox.count()
            average = self.outbox.total_bytes() // count if count else 1024
            fit = self.outbox.room(wanted, average)
            if fit:
                return fit
            self._set_paused(True)
            if self.stop.wait(self.cfg.poll_s):
                return 0

    def _report_unreadable(self, cand: Candidate, message: str) -> None:
        self._unreadable[cand.key.path] = (cand.key, cand.ctime_ns)
        self.reporter.add(unreadable=1)
        self.reporter.error("unreadable", message, file=str(cand.path))

    def _with_content(self, ready: list[Candidate]) -> list[Candidate]:
        """The candidates with their SHA-256; with ``--source keep``, without those whose bytes were already
        spooled or answered under the same path (``touch``: new mtime, same image)."""
        out = []
        for cand in ready:
            try:
                sha = content_hash(cand.path)
            except OSError:
                out.append(cand)  # encoding reports it
                continue
            cand = replace(cand, key=replace(cand.key, sha256=sha))
            if self.cfg.source_policy is SourcePolicy.keep and (
                    (cand.key.path, sha) in self._known_content or self.results.knows_content(cand.key.path, sha)):
                self._handled.add(cand.key)
                continue
            out.append(cand)
        return out

    def _spool(self, encoded: list[Encoded]) -> bool:
        """Commit a batch to the outbox; False when stopping or the disk refused part of it (the entries that
        were written are queued all the same; the other sources stay in place for a later scan)."""
        items = [(e.stream, e.candidate.key, None if e.candidate.path.suffix.lower() == ".vcb" else self.model_name,
                  {"file": str(e.candidate.path)}) for e in encoded]
        failure: OSError | None = None
        while True:
            try:
                entries = self.outbox.put(items)
                break
            except OutboxFull:
                self._set_paused(True)
                if self.stop.wait(self.cfg.poll_s):
                    return False
            except OSError as exc:
                entries, failure = getattr(exc, "committed", []), exc
                break
        self._set_paused(False)
        if entries:
            self.reporter.add(encoded=len(entries))
            self.uploader.submit(entries)
            for e in encoded[:len(entries)]:  # `put` writes in order and stops at the first failure
                self._handled.add(e.candidate.key)
                if e.candidate.key.sha256:
                    self._known_content.add((e.candidate.key.path, e.candidate.key.sha256))
                self._after_spool(e.candidate)
        if failure is None:
            if self._outbox_failing:
                self._outbox_failing = False
                self.reporter.event("outbox_ok", f"{self.outbox.root}: the outbox takes images again")
            return True
        if not self._outbox_failing:  # one line per episode, not one per try
            self._outbox_failing = True
            self.reporter.error("outbox_error", f"{self.outbox.root}: cannot write to the outbox "
                                f"({failure.strerror or failure}); {len(entries)} of {len(items)} image(s) saved "
                                f"and queued for upload, the rest stay in place and are tried again when uploads "
                                f"make room (at the latest every {self.cfg.backoff.cap_s:.0f} s)",
                                errno=failure.errno)
        self._wait_for_room(self.outbox.count())
        return False

    def _wait_for_room(self, count: int) -> None:
        """After a write error: until an upload removed an entry (space freed), `backoff.cap_s` passed, or stop."""
        deadline = time.monotonic() + self.cfg.backoff.cap_s
        while time.monotonic() < deadline and self.outbox.count() >= count:
            if self.stop.wait(min(self.cfg.poll_s, max(0.0, deadline - time.monotonic()))):
                return

    def _folders_unlistable(self, now: set[str]) -> None:
        """Say once when a sub-folder cannot be listed (its images are not seen), and when it can again."""
        for folder in sorted(now - self._unlistable):
            self.reporter.error("watch_error", f"{folder}: cannot list this folder (permission denied?); its "
                                "images are not seen until it can be read")
        for folder in sorted(self._unlistable - now):
            if os.path.isdir(folder) and os.access(folder, os.R_OK | os.X_OK):
                self.reporter.event("watch_resumed", f"{folder}: folder readable again")
        self._unlistable = now

    def _check_roots(self) -> None:
        for root in self.roots:
            ok = root.is_dir() and os.access(root, os.R_OK | os.X_OK)
            if not ok and root not in self._missing:
                self._missing.add(root)
                self.reporter.error("watch_error", f"{root}: watched folder missing or not readable; waiting "
                                    "for it and watching the others")
            elif ok and root in self._missing:
                self._missing.discard(root)
                self.reporter.event("watch_resumed", f"{root}: watched folder is back")

    def intake_loop(self) -> None:
        tracker = StabilityTracker(self.cfg.settle_s)
        exclude = [self.outbox.root] + ([self.done_dir] if self.done_dir else [])
        while not self.stop.is_set():
            self._check_roots()
            unlistable: dict[str, OSError] = {}
            ready = tracker.scan(self.roots, exclude, self._skip, unlistable.__setitem__)
            self._folders_unlistable(set(unlistable))
            start = 0
            while start < len(ready) and not self.stop.is_set():
                fit = self._room(min(self.cfg.batch_size, len(ready) - start))
                if not fit:
                    break
                batch = self._with_content(ready[start:start + fit])  # hashed when their turn comes
                start += fit
                if not batch:
                    continue
                outcomes = encode_batch(self.encoder, batch)
                now_ns = time.time_ns()
                for o in outcomes:
                    if isinstance(o, Unreadable):
                        key = o.candidate.key
                        if o.undecodable and now_ns - key.mtime_ns < self.cfg.unreadable_after_s * 1e9:
                            # perhaps a writer that paused longer than --settle: wait for it, say nothing yet
                            self._deferred[key.path] = (key, o.message)
                        else:
                            self._report_unreadable(o.candidate, o.message)
                encoded = [o for o in outcomes if isinstance(o, Encoded)]
                if encoded and not self._spool(encoded):
                    break
            self.stop.wait(self.cfg.poll_s)

    # -- the whole run ------------------------------------------------------------------------------------

    def run(self) -> int:
        self.recover()
        self.uploader.start()
        intake = None
        if self.roots:
            intake = threading.Thread(target=self._guarded_intake, name="vitcodec-intake", daemon=True)
            intake.start()
        with self.reporter:
            adopted_at = time.monotonic()
            while not self.stop.wait(0.25):
                if time.monotonic() - adopted_at >= ADOPT_EVERY_S:
                    adopted_at = time.monotonic()
                    self._adopt()
                self._refresh()
                self.reporter.tick()
            self.reporter.event("stopping", f"stopping: finishing {self.reporter.counters.in_flight} upload(s) "
                                "in flight; the rest stays in the outbox")
            if intake is not None:
                intake.join()
            self.uploader.stop()
            self._refresh()
        self.results.close()
        c = self.reporter.counters
        self.reporter.event("stopped", f"stopped: {c.pending} pending in the outbox, {c.sent} sent, "
                            f"{c.rejected} rejected, {c.unreadable} unreadable", **c.snapshot())
        return 0

    def _guarded_intake(self) -> None:
        try:
            self.intake_loop()
        except Exception as exc:  # noqa: BLE001 - the uploader keeps draining even if intake breaks
            self.reporter.error("intake_error", f"intake stopped: {type(exc).__name__}: {exc}")

    def _adopt(self) -> None:
        """Queue entries other commands put into pending/ while we run (``requeue``, ``send --outbox``)."""
        try:
            fresh = self.outbox.adopt()
        except OSError:
            return  # the outbox is unreadable right now; the next look (or start) finds them
        if fresh:
            self.reporter.event("adopted", f"{len(fresh)} new entr{'y' if len(fresh) == 1 else 'ies'} in "
                                f"{self.outbox.pending_dir} (requeue or send --outbox): queued for upload",
                                count=len(fresh))
            self.uploader.submit(fresh)

    def _refresh(self) -> None:
        self.reporter.set(pending=self.outbox.count(), pending_bytes=self.outbox.total_bytes())


def install_signal_handlers(agent: Agent) -> None:
    """First SIGINT/SIGTERM: stop cleanly. Second: exit now (outbox and results are consistent at any time)."""

    def handler(signum: int, frame: Any) -> None:
        if agent.stop.is_set():
            agent.reporter.event("forced_exit", "second signal: exiting now; unanswered images stay in the "
                                 "outbox", "warning")
            os._exit(130)
        agent.reporter.event("signal", f"{signal.Signals(signum).name}: stopping after the uploads in flight")
        agent.stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
