"""`vitcodec-edge watch` against the faults a device owner meets: a full disk under the outbox or the results
file, a results file rotated or deleted while the agent runs, a writer that pauses mid-file, permissions
fixed after the fact, a folder that cannot be listed, a server that comes back, ``touch``, refused streams sent
again (``requeue``), file names that are not UTF-8, and `send`'s table when images fail.

Faults are injected in this process (monkeypatch), so the agent runs here too (`LiveAgent`), against real
servers from conftest.py; the process-level behaviour is in test_edge_agent.py.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from agent_processes import count_lines, free_port, read_results, wait_for
from conftest import AUTH_TOKEN
from vitcodec.edge.agent import outbox as outbox_module
from vitcodec.edge.agent.intake import SourcePolicy
from vitcodec.edge.agent.outbox import Outbox, SourceKey
from vitcodec.edge.agent.results import ResultsLog
from vitcodec.edge.agent.runner import Agent, AgentConfig
from vitcodec.edge.agent.status import Reporter
from vitcodec.wire import Backoff

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "samples").glob("fmnist-*.png"))


class LiveAgent:
    """`Agent.run` in a thread of this process (faults injected with monkeypatch reach it), with ``--json``
    logs kept in memory. ``with LiveAgent(...) as agent:`` runs it; leaving the block stops it cleanly."""

    def __init__(self, tmp_path: Path, folders: list[Path], server: str, **overrides: Any) -> None:
        values: dict[str, Any] = dict(
            watch=folders, server=server, outbox=tmp_path / "outbox", results=tmp_path / "results.jsonl",
            token=AUTH_TOKEN, timeout_s=3.0, concurrency=4, poll_s=0.1, settle_s=0.1, backoff=Backoff(0.1, 0.5))
        values.update(overrides)
        self.stream = io.StringIO()
        self.agent = Agent(AgentConfig(**values), Reporter(as_json=True, stream=self.stream, status_interval_s=0))
        self.results = Path(values["results"])
        self.rc: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.rc = self.agent.run()

    def __enter__(self) -> LiveAgent:
        self._thread.start()
        wait_for(lambda: self.events("start"), 30, "the agent to start", 0.05, self.log)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.agent.stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), self.log()
        assert self.rc == 0, self.log()

    def log(self) -> str:
        return self.stream.getvalue()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in map(json.loads, self.log().splitlines()) if r["event"] == name]

    def wait_answers(self, n: int, timeout: float = 60.0, path: Path | None = None) -> None:
        target = path or self.results
        wait_for(lambda: count_lines(target) >= n, timeout, f"{n} answers in {target.name}", 0.05, self.log)


def copy_samples(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(sample, folder)) for sample in SAMPLES[start:start + n]]


def answered_files(*results: Path) -> list[str]:
    return [r["source"]["path"] for path in results for r in read_results(path)]


# ---- 1. the outbox's disk fills up --------------------------------------------------------------------

def test_disk_full_outbox_sends_what_was_saved_and_drains(tmp_path, auth_server, monkeypatch):
    """A disk with room for 3 entries and a batch of 10 images: the 3 saved entries are uploaded (not left
    behind because the batch failed), their removal makes room, and the backlog drains; the unsaved sources
    stay in the watched folder until they are saved."""
    real_write = outbox_module.write_atomic
    refused: list[str] = []

    def small_disk(target: Path, data: bytes, tmp_dir: Path, sync_dir: bool = True) -> None:
        if target.parent.name == "pending" and len(list(target.parent.iterdir())) >= 3:
            refused.append(target.name)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(target, data, tmp_dir, sync_dir)

    monkeypatch.setattr(outbox_module, "write_atomic", small_disk)
    inbox = tmp_path / "inbox"
    sources = copy_samples(inbox, 10)
    done = tmp_path / "done"
    with LiveAgent(tmp_path, [inbox], auth_server.http_url, source_policy=SourcePolicy.move, done_dir=done) as agent:
        agent.wait_answers(10, timeout=45)
        time.sleep(0.5)
    assert refused, "the simulated disk never filled up"
    assert sorted(answered_files(agent.results)) == sorted(str(p) for p in sources)  # each once
    assert sorted(p.name for p in done.iterdir()) == sorted(p.name for p in sources)
    assert list(inbox.iterdir()) == [] and list((tmp_path / "outbox" / "pending").iterdir()) == []
    (error,) = agent.events("outbox_error")  # one line for the episode, not one per try
    assert "No space left on device" in error["message"] and "3 of 10 image(s) saved" in error["message"]
    assert agent.events("outbox_ok")


# ---- 2. the results file is rotated or deleted --------------------------------------------------------

def test_results_log_follows_rotation_and_keeps_a_ledger(tmp_path):
    path, ledger = tmp_path / "results.jsonl", tmp_path / "outbox" / "ledger.jsonl"
    notes: list[tuple[str, str]] = []
    log = ResultsLog(path, ledger, on_event=lambda event, message: notes.append((event, message)))

    def record(rid: str) -> dict[str, Any]:
        return {"id": rid, "source": SourceKey(f"/cam/{rid}.png", 1, 1).as_dict(), "label": "Bag"}

    assert log.append(record("a"))
    path.rename(tmp_path / "results.jsonl.1")  # logrotate: rename, then a new empty file
    path.write_bytes(b"")
    assert log.append(record("b"))
    assert [e for e, _ in notes] == ["results_reopened"] and "replaced" in notes[0][1]
    assert log.append(record("c"))  # no second notice while the file stays ours
    assert len(notes) == 1
    path.unlink()  # deleted outright
    assert log.append(record("d"))
    assert len(notes) == 2 and "deleted" in notes[1][1]
    log.close()
    assert [r["id"] for r in read_results(tmp_path / "results.jsonl.1")] == ["a"]
    assert [r["id"] for r in read_results(path)] == ["d"]
    again = ResultsLog(path, ledger)  # a restart after the rotation still knows every answer
    assert all(rid in again for rid in "abcd") and again.sent == 4
    assert again.knows_source(SourceKey("/cam/a.png", 1, 1))
    again.close()


def test_results_log_adds_older_answers_to_the_ledger(tmp_path):
    """Answers of an older version (no ledger yet) or of a crash between results line and ledger line go into
    the ledger at start, so a later rotation cannot make them be sent again."""
    path, ledger = tmp_path / "results.jsonl", tmp_path / "ledger.jsonl"
    path.write_text(json.dumps({"id": "old", "source": SourceKey("/cam/o.png", 1, 1).as_dict()}) + "\n")
    ResultsLog(path, ledger).close()
    path.unlink()
    log = ResultsLog(path, ledger)
    assert "old" in log and log.knows_source(SourceKey("/cam/o.png", 1, 1))


def test_rotated_results_keep_answers_flowing_and_a_restart_sends_nothing_again(tmp_path, auth_server):
    inbox = tmp_path / "inbox"
    first = copy_samples(inbox, 3)
    rotated = tmp_path / "results.jsonl.1"
    with LiveAgent(tmp_path, [inbox], auth_server.http_url) as agent:
        agent.wait_answers(3)
        agent.results.rename(rotated)
        agent.results.write_bytes(b"")
        later = copy_samples(inbox, 2, start=3)
        agent.wait_answers(2, timeout=30)
        time.sleep(0.5)
    assert len(agent.events("results_reopened")) == 1
    assert sorted(answered_files(rotated)) == sorted(map(str, first))
    assert sorted(answered_files(agent.results)) == sorted(map(str, later))
    last = copy_samples(inbox, 1, start=5)
    with LiveAgent(tmp_path, [inbox], auth_server.http_url) as again:  # kept sources, rotated answers
        again.wait_answers(3, timeout=30)
        time.sleep(1.0)  # room for an unwanted second answer
    files = answered_files(rotated, again.results)
    assert sorted(files) == sorted(map(str, first + later + last))  # every image exactly once


# ---- 3. a short write to the results file -------------------------------------------------------------

@pytest.mark.parametrize("how", ["short", "raises"])
def test_a_short_write_leaves_no_torn_line(tmp_path, monkeypatch, how):
    """ENOSPC part way through a line: the partial line is cut off again, so every line stays readable and
    the answer is written whole when it is tried again."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to tell the results file's descriptor")
    path = tmp_path / "results.jsonl"
    log = ResultsLog(path)
    assert log.append({"id": "a", "label": "Bag"})
    real_write = os.write
    full = {"on": True}

    def disk_full_after_20_bytes(fd: int, data: bytes) -> int:
        if full["on"] and os.readlink(f"/proc/self/fd/{fd}") == str(path):
            written = real_write(fd, bytes(data)[:20])
            if how == "short":
                return written
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_full_after_20_bytes)
    with pytest.raises(OSError):
        log.append({"id": "b", "label": "Coat", "padding": "x" * 100})
    assert path.read_bytes().endswith(b"\n") and len(path.read_bytes().splitlines()) == 1
    full["on"] = False
    assert log.append({"id": "b", "label": "Coat", "padding": "x" * 100})
    log.close()
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b"]  # jq/pandas read every line


# ---- 4. rough edges -----------------------------------------------------------------------------------

def test_a_writer_pausing_longer_than_settle_is_not_an_error(tmp_path, auth_server):
    """Half a PNG sits there longer than --settle: it is waited for, not reported; a file that is damaged and
    old is still reported at once."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    data = SAMPLES[0].read_bytes()
    broken = inbox / "broken.png"
    broken.write_bytes(b"not an image")
    os.utime(broken, (time.time() - 3600, time.time() - 3600))
    slow = inbox / "slow.png"
    slow.write_bytes(data[:len(data) // 2])
    with LiveAgent(tmp_path, [inbox], auth_server.http_url) as agent:  # --settle 0.1
        time.sleep(1.5)  # the half file is taken (stable for 15 scans) and does not decode
        with open(slow, "ab") as f:
            f.write(data[len(data) // 2:])
        agent.wait_answers(1, timeout=30)
        time.sleep(0.3)
    (unreadable,) = agent.events("unreadable")
    assert "broken.png" in unreadable["message"]
    assert answered_files(agent.results) == [str(slow)]


def test_a_file_is_tried_again_after_its_permissions_are_fixed(tmp_path, auth_server, monkeypatch):
    """chmod 0, then chmod 644: the image is sent without a restart. (Root reads any file, so the refusal a
    user would get is played by a loader that honours the mode bits.)"""
    from vitcodec.edge import preprocess

    real_load = preprocess.load_image

    def as_a_user(path: Any) -> Any:
        if not os.stat(path).st_mode & 0o444:
            raise preprocess.ImageReadError(f"{path}: permission denied")
        return real_load(path)

    monkeypatch.setattr(preprocess, "load_image", as_a_user)
    inbox = tmp_path / "inbox"
    (locked,) = copy_samples(inbox, 1)
    locked.chmod(0)
    with LiveAgent(tmp_path, [inbox], auth_server.http_url) as agent:
        wait_for(lambda: agent.events("unreadable"), 30, "the permission error", 0.05, agent.log)
        time.sleep(0.5)
        assert count_lines(agent.results) == 0
        locked.chmod(0o644)
        agent.wait_answers(1, timeout=30)
    assert "permission denied" in agent.events("unreadable")[0]["message"]
    assert len(agent.events("unreadable")) == 1


def test_a_folder_that_cannot_be_listed_is_said_once(tmp_path, auth_server, monkeypatch):
    from vitcodec.edge.agent import intake

    real_scandir = os.scandir
    inbox = tmp_path / "inbox"
    copy_samples(inbox / "locked", 1)
    blocked = {"on": True}

    def scandir(path: Any = ".") -> Any:
        if blocked["on"] and str(path) == str(inbox / "locked"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(intake.os, "scandir", scandir)
    with LiveAgent(tmp_path, [inbox], auth_server.http_url) as agent:
        wait_for(lambda: agent.events("watch_error"), 30, "the folder error", 0.05, agent.log)
        time.sleep(1.0)  # ten more scans: still one line
        (error,) = agent.events("watch_error")
        assert str(inbox / "locked") in error["message"]
        blocked["on"] = False
        agent.wait_answers(1, timeout=30)
    assert [e for e in agent.events("watch_resumed") if "locked" in e["message"]]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_uploads_resume_soon_after_the_server_is_ready(tmp_path, start_server, edge_streams, transport):
    """Backoff that would wait 15-30 s: readiness probes while the server is away make the uploads go within
    a few seconds of it being ready."""
    http_port, grpc_port = free_port(), free_port()
    while grpc_port == http_port:
        grpc_port = free_port()
    url = f"http://127.0.0.1:{http_port}" if transport == "http" else f"grpc://127.0.0.1:{grpc_port}"
    box = Outbox(tmp_path / "outbox")
    box.put([(stream, SourceKey(f"/cam/{i}.png", 1, i), "fmnist-q2", {}) for i, stream in enumerate(edge_streams[:2])])
    server = None
    try:
        with LiveAgent(tmp_path, [], url, backoff=Backoff(30.0, 30.0), timeout_s=2.0) as agent:
            wait_for(lambda: agent.events("server_unreachable"), 30, "the first failure", 0.05, agent.log)
            server = start_server(http_port=http_port, grpc_port=grpc_port, auth_token=AUTH_TOKEN,
                                  models=["fmnist-q2"])
            ready_at = time.monotonic()
            agent.wait_answers(2, timeout=60)
            waited = time.monotonic() - ready_at
    finally:
        if server is not None:
            server.stop()
    assert waited < 5.0, f"answers {waited:.1f} s after the server was ready\n{agent.log()}"
    assert agent.events("server_reachable")


def test_touch_does_not_send_an_image_again(tmp_path, auth_server):
    inbox = tmp_path / "inbox"
    images = copy_samples(inbox, 2)
    with LiveAgent(tmp_path, [inbox], auth_server.http_url) as agent:
        agent.wait_answers(2)
        before = images[0].stat().st_mtime_ns
        os.utime(images[0])  # touch: new mtime (now), same bytes
        assert images[0].stat().st_mtime_ns != before
        (new,) = copy_samples(inbox, 1, start=2)
        agent.wait_answers(3)
        time.sleep(1.0)  # room for an unwanted answer to the touched file
    assert sorted(answered_files(agent.results)) == sorted(map(str, [*images, new]))  # the touched one once
    assert all(r["source"]["sha256"] for r in read_results(agent.results))
    changed = copy_samples(tmp_path / "other", 1, start=3)[0].read_bytes()
    images[1].write_bytes(changed)  # new bytes under the same name: a new image
    with LiveAgent(tmp_path, [inbox], auth_server.http_url) as again:
        again.wait_answers(4)
        time.sleep(0.5)
    assert sorted(answered_files(agent.results)) == sorted(map(str, [*images, new, images[1]]))


def test_requeue_sends_refused_streams_again(tmp_path, auth_server, cloud_server, other_streams):
    """A stream for a model the server did not serve is refused (404, kept in rejected/); once a server that
    has the model is there, `vitcodec-edge requeue` puts it back and the running agent sends it."""
    from typer.testing import CliRunner
    from vitcodec.edge.cli import app

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "q1.vcb").write_bytes(other_streams[0])
    with LiveAgent(tmp_path, [inbox], auth_server.http_url) as agent:  # serves fmnist-q2 only
        agent.wait_answers(1)
    (refused,) = read_results(agent.results)
    assert refused["rejected"] and refused["status"] == 404
    outbox = tmp_path / "outbox"
    listed = CliRunner().invoke(app, ["requeue", "--outbox", str(outbox), "--list"])
    assert listed.exit_code == 0 and refused["id"] in listed.output
    with LiveAgent(tmp_path, [], cloud_server.http_url, token=None) as fixed:  # every model
        result = CliRunner().invoke(app, ["requeue", "--outbox", str(outbox)])
        assert result.exit_code == 0, result.output
        assert list((outbox / "rejected").iterdir()) == []
        fixed.wait_answers(2, timeout=30)
    refused_again, answer = read_results(agent.results)
    assert answer["requeued_from"] == refused["id"] and answer["label"] and not answer.get("rejected")
    assert answer["file"] == str(inbox / "q1.vcb") and fixed.events("adopted")
    assert list((outbox / "pending").iterdir()) == []
    unknown = CliRunner().invoke(app, ["requeue", "--outbox", str(outbox), "nope"])
    assert unknown.exit_code == 2


def test_file_names_that_are_not_utf8_are_kept_exactly(tmp_path, auth_server):
    raw = os.fsencode(str(tmp_path / "inbox")) + b"/caf\xe9-\xff.png"  # Latin-1 names from an old camera
    name = os.fsdecode(raw)
    key = SourceKey(name, 1, 2)
    stored = json.loads(json.dumps(key.as_dict()))
    assert stored["path"].encode("utf-8") and SourceKey.from_dict(stored).path == name
    (tmp_path / "inbox").mkdir()
    shutil.copy(SAMPLES[0], name)
    with LiveAgent(tmp_path, [tmp_path / "inbox"], auth_server.http_url) as agent:
        agent.wait_answers(1)
    line = agent.results.read_bytes().splitlines()[0]
    assert b"\\udc" not in line  # no lone surrogates: valid for jq, pandas, any JSON reader
    record = json.loads(line.decode("utf-8"))
    assert base64.b64decode(record["file_b64"]) == raw and base64.b64decode(record["source"]["path_b64"]) == raw
    assert "\ufffd" in record["file"]  # readable, with the undecodable bytes marked
    with LiveAgent(tmp_path, [tmp_path / "inbox"], auth_server.http_url) as again:  # still known after restart
        time.sleep(1.0)
    assert count_lines(again.results) == 1


def test_send_table_shows_errors_in_their_own_column(capsys):
    from vitcodec.edge.cli import _print_rows

    rows = [{"file": "a.png", "bytes": 30, "bpp": 0.3, "label": "Bag", "confidence": 0.9, "latency_ms": 1.0},
            {"file": "b.png", "bytes": 31, "error": "cannot reach [server] (Connection refused)", "status": 0}]
    _print_rows(rows, as_json=False, as_csv=False, top_k=1)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "label" in line)
    assert "error" in header
    failed = next(line for line in out.splitlines() if "b.png" in line)
    assert "(failed)" in failed and "cannot reach [server] (Connection refused)" in failed  # markup escaped
    assert failed.index("(failed)") < failed.index("cannot reach")  # the label column holds the marker only
