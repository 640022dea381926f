"""`vitcodec-edge watch` and its parts, with real files, a real server and real agent processes (the long chaos
runs are in test_edge_agent_chaos.py): atomic outbox, results log, file stability, refusals to rejected/,
source policies, restarts, the outbox limit, disk full, bad arguments, and `send --outbox`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agent_processes import AgentProcess, child_env, count_lines, free_port, read_results, wait_for
from conftest import AUTH_TOKEN
from vitcodec.edge.agent.intake import Candidate, StabilityTracker
from vitcodec.edge.agent.outbox import Outbox, OutboxFull, SourceKey, entry_id
from vitcodec.edge.agent.results import ResultsLog
from vitcodec.wire import Backoff

FAST = ["--poll", "0.1", "--settle", "0.1", "--unreadable-after", "1", "--timeout", "3", "--max-backoff", "0.5",
        "--json", "--status-interval", "1"]
SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def key(name: str, size: int = 1, mtime: int = 1) -> SourceKey:
    return SourceKey(f"/cam/{name}", size, mtime)


def events(log: str, name: str) -> list[dict]:
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record["event"] == name:
                out.append(record)
    return out


# ---- parts ---------------------------------------------------------------------------------------------

def test_outbox_commits_whole_entries_and_recovers_them(tmp_path):
    box = Outbox(tmp_path / "ob")
    entries = box.put([(b"\xb1stream-a", key("a.png"), "fmnist-q2", {}), (b"\xb1stream-b", key("b.png"), None, {})])
    assert [e.read_stream() for e in entries] == [b"\xb1stream-a", b"\xb1stream-b"]
    assert entries[0].id == entry_id(b"\xb1stream-a", key("a.png"))
    assert entry_id(b"\xb1stream-a", key("a.png", mtime=2)) != entries[0].id  # a rewritten file is a new image
    (box.tmp_dir / "half-written.tmp").write_bytes(b"partial")  # a crash mid-write leaves only this
    again = Outbox(tmp_path / "ob")
    assert list(again.tmp_dir.iterdir()) == []
    loaded, problems = again.load()
    assert problems == [] and sorted(e.id for e in loaded) == sorted(e.id for e in entries)
    assert again.put([(b"\xb1stream-a", key("a.png"), "fmnist-q2", {})])[0].id == entries[0].id
    assert again.count() == 2  # the same image is not spooled twice
    again.remove(loaded[0])
    assert again.count() == 1 and len(list(again.pending_dir.iterdir())) == 1


def test_outbox_limits(tmp_path):
    box = Outbox(tmp_path / "ob", max_count=2, max_bytes=0)
    box.put([(b"\xb1one", key("1"), None, {}), (b"\xb1two", key("2"), None, {})])
    assert box.full()
    with pytest.raises(OutboxFull):
        box.put([(b"\xb1three", key("3"), None, {})])
    assert box.count() == 2
    tiny = Outbox(tmp_path / "tiny", max_count=0, max_bytes=10)
    tiny.put([(b"\xb1" * 100, key("big"), None, {})])  # an empty outbox always takes one entry
    assert tiny.full()


def test_results_log_appends_once_and_survives_a_torn_tail(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(json.dumps({"id": "a", "source": key("a").as_dict(), "label": "Bag"}).encode()
                     + b'\n{"id": "b", "sou')  # a power cut mid-line
    log = ResultsLog(path)
    assert log.damaged_lines == 1 and "a" in log and "b" not in log and log.knows_source(key("a"))
    assert log.append({"id": "b", "source": key("b").as_dict(), "label": "Coat"})
    assert not log.append({"id": "b", "source": key("b").as_dict(), "label": "Coat"})
    assert not log.append({"id": "a", "label": "Bag"})
    log.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["id"] == "b"
    assert ResultsLog(path).sent == 2


def test_files_being_written_are_not_picked_up(tmp_path):
    tracker = StabilityTracker(settle_s=0.0)
    growing, done = tmp_path / "growing.png", tmp_path / "done.png"
    growing.write_bytes(b"x")
    done.write_bytes(b"y")
    for name in (".hidden.png", "upload.png.part", "notes.txt", "frame.png.tmp"):
        (tmp_path / name).write_bytes(b"z")
    never = lambda cand: False  # noqa: E731

    assert tracker.scan([tmp_path], [], never) == []  # first sight: not yet known to be stable
    with open(growing, "ab") as f:
        f.write(b"more")
    assert [c.path.name for c in tracker.scan([tmp_path], [], never)] == ["done.png"]
    assert [c.path.name for c in tracker.scan([tmp_path], [], never)] == ["done.png", "growing.png"]
    assert StabilityTracker(settle_s=60).scan([tmp_path], [], never) == []
    slow = StabilityTracker(settle_s=60)
    slow.scan([tmp_path], [], never)
    assert slow.scan([tmp_path], [], never) == []  # unchanged twice but written less than 60 s ago
    (tmp_path / "outbox").mkdir()
    (tmp_path / "outbox" / "spooled.png").write_bytes(b"s")
    seen: list[Candidate] = []
    tracker.scan([tmp_path], [tmp_path / "outbox"], lambda c: seen.append(c) or True)
    assert sorted(c.path.name for c in seen) == ["done.png", "growing.png"]  # an excluded folder is not scanned


def test_backoff_is_capped_exponential_with_jitter():
    backoff = Backoff(base_s=0.5, cap_s=4.0)
    for failures, top in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (30, 4.0)):
        delays = [backoff.delay(failures) for _ in range(200)]
        assert all(top / 2 <= d <= top for d in delays)
        assert len(set(delays)) > 100  # jittered: devices do not retry in step


# ---- the agent process ---------------------------------------------------------------------------------

@pytest.fixture()
def inbox(tmp_path, package, other_package, edge_streams, other_streams):
    """12 samples (two in a subfolder), an unreadable image, a stream for a model the server does not serve, a
    damaged stream, and a file still being written."""
    folder = tmp_path / "inbox"
    (folder / "sub").mkdir(parents=True)
    samples = sorted(SAMPLES.glob("fmnist-*.png"))[:12]
    for i, sample in enumerate(samples):
        shutil.copy(sample, folder / ("sub" if i < 2 else "") / sample.name)
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "other-model.vcb").write_bytes(other_streams[0])
    damaged = bytearray(edge_streams[0])
    damaged[-2] ^= 0xFF
    (folder / "damaged.vcb").write_bytes(bytes(damaged))
    (folder / "incoming.png.part").write_bytes(b"half")
    return folder


def _agent(model_repo, tmp_path, folders, server, *extra, logs: str = "") -> AgentProcess:
    """An agent on tmp_path's outbox and results; its logs in tmp_path/`logs`."""
    args = [*map(str, folders), "--server", server, "--outbox", str(tmp_path / "outbox"), "--results",
            str(tmp_path / "results.jsonl"), *FAST, *extra]
    log_dir = tmp_path / logs
    log_dir.mkdir(exist_ok=True)
    return AgentProcess(args, model_repo, log_dir)


def _run_until(agent: AgentProcess, results: Path, n: int, timeout: float = 90.0) -> None:
    agent.start()
    try:
        agent.wait_started()
        wait_for(lambda: count_lines(results) >= n, timeout, f"{n} answers", 0.1, agent.log)
        time.sleep(1.0)  # room for an unwanted extra answer to show up
    finally:
        rc = agent.terminate()
    assert rc == 0, agent.log()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_watch_answers_refuses_and_moves(model_repo, tmp_path, inbox, auth_server, transport):
    url = auth_server.http_url if transport == "http" else f"grpc://{auth_server.grpc_target}"
    done = tmp_path / "done"
    moved = sorted(p.relative_to(inbox).as_posix() for p in inbox.rglob("*")
                   if p.is_file() and p.name not in ("broken.png", "incoming.png.part"))
    agent = _agent(model_repo, tmp_path, [inbox], url, "--token", AUTH_TOKEN, "--source", "move",
                   "--done-dir", str(done))
    results = tmp_path / "results.jsonl"
    _run_until(agent, results, 14)
    records = read_results(results)
    answered = {Path(r["file"]).name: r for r in records}
    assert len(records) == 14 == len(answered)
    rejected = {name for name, r in answered.items() if r.get("rejected")}
    assert rejected == {"other-model.vcb", "damaged.vcb"}
    assert answered["other-model.vcb"]["status"] == 404 and answered["damaged.vcb"]["status"] == 400
    for name, r in answered.items():
        if name not in rejected:
            assert r["model"] == "fmnist-q2" and r["label"] == r["top_k"][0]["label"] and len(r["top_k"]) == 5
            assert r["bytes"] > 0 and r["server_timings_ms"] and r["time"].endswith("Z")
    notes = [json.loads(p.read_text()) for p in (tmp_path / "outbox" / "rejected").glob("*.json")]
    assert sorted(n["status"] for n in notes) == [400, 404] and all(n["error"] for n in notes)
    assert len(list((tmp_path / "outbox" / "rejected").glob("*.vcb"))) == 2
    assert list((tmp_path / "outbox" / "pending").iterdir()) == []
    # sources moved (layout kept); the unreadable image and the file being written stay where they were
    assert sorted(p.relative_to(done).as_posix() for p in done.rglob("*") if p.is_file()) == moved
    assert sorted(p.name for p in inbox.rglob("*") if p.is_file()) == ["broken.png", "incoming.png.part"]
    log = agent.log(tail=0)
    (unreadable,) = events(log, "unreadable")
    assert "broken.png: not a readable image" in unreadable["message"]
    assert len(events(log, "rejected")) == 2 and events(log, "stopped")


def test_restart_never_answers_twice(model_repo, tmp_path, auth_server):
    """Kept sources are not sent again after a restart, and an entry whose answer was written just before a
    crash (entry not yet removed) is recognised and removed, not resent."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    for sample in sorted(SAMPLES.glob("fmnist-*.png"))[:4]:
        shutil.copy(sample, folder)
    results = tmp_path / "results.jsonl"
    agent = _agent(model_repo, tmp_path, [folder], auth_server.http_url, "--token", AUTH_TOKEN)
    # the crash window, made real: an entry spooled, answered, and put back as if its removal never happened
    box = Outbox(tmp_path / "outbox")
    (entry,) = box.put([(_stream_of(model_repo, folder / "fmnist-00000.png"), SourceKey("/elsewhere/x.png", 1, 1),
                         "fmnist-q2", {})])
    saved = entry.path.read_bytes()
    _run_until(agent, results, 5)
    entry.path.write_bytes(saved)
    _run_until(agent, results, 5)
    records = read_results(results)
    assert len(records) == 5 == len({r["id"] for r in records})
    assert list((tmp_path / "outbox" / "pending").iterdir()) == []
    (start,) = events(_run_log(agent, 2), "start")
    assert start["recovered"] == 1 and start["pending"] == 0


def _run_log(agent: AgentProcess, run: int) -> str:
    return (agent.log_dir / f"agent-{run}.log").read_text()


def _stream_of(model_repo: Path, image: Path) -> bytes:
    from vitcodec.edge.encoder import EdgeEncoder
    from vitcodec.packages import resolve_model

    return EdgeEncoder(resolve_model("fmnist-q2", roots=[model_repo])).encode_image(image).stream


def test_full_outbox_pauses_intake_then_drains(model_repo, tmp_path, auth_server):
    folder = tmp_path / "inbox"
    folder.mkdir()
    for sample in sorted(SAMPLES.glob("fmnist-*.png"))[:8]:
        shutil.copy(sample, folder)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every upload fails and is retried
    results = tmp_path / "results.jsonl"
    agent = _agent(model_repo, tmp_path, [folder], dead, "--max-pending", "3")
    agent.start()
    try:
        wait_for(lambda: events(agent.log(tail=0), "intake_paused"), 60, "intake to pause", 0.1, agent.log)
        time.sleep(1.0)
        assert len(list((tmp_path / "outbox" / "pending").iterdir())) == 3
        assert events(agent.log(tail=0), "server_unreachable")
    finally:
        assert agent.terminate() == 0, agent.log()
    assert count_lines(results) == 0
    assert len(list((tmp_path / "outbox" / "pending").iterdir())) == 3  # left for the next start
    live = _agent(model_repo, tmp_path, [folder], f"grpc://{auth_server.grpc_target}", "--token", AUTH_TOKEN,
                  "--max-pending", "3", logs="live")
    _run_until(live, results, 8)
    records = read_results(results)
    assert sorted(Path(r["file"]).name for r in records) == sorted(p.name for p in folder.iterdir())
    assert list((tmp_path / "outbox" / "pending").iterdir()) == []
    log = live.log(tail=0)
    assert events(log, "intake_paused") and events(log, "intake_resumed")


def test_disk_full_results_is_one_line_and_the_agent_keeps_going(model_repo, tmp_path, auth_server):
    """/dev/full refuses every write with ENOSPC, as a full disk does: answers cannot be recorded, so entries
    stay in the outbox, one error line each time, and the agent keeps running and stops cleanly."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    folder = tmp_path / "inbox"
    folder.mkdir()
    for sample in sorted(SAMPLES.glob("fmnist-*.png"))[:2]:
        shutil.copy(sample, folder)
    args = [str(folder), "--server", auth_server.http_url, "--token", AUTH_TOKEN, "--outbox",
            str(tmp_path / "outbox"), "--results", "/dev/full", *FAST]
    agent = AgentProcess(args, model_repo, tmp_path).start()
    try:
        wait_for(lambda: len(events(agent.log(tail=0), "results_error")) >= 2, 60, "two results errors", 0.1,
                 agent.log)
        assert agent.proc.poll() is None
    finally:
        assert agent.terminate() == 0, agent.log()
    errors = events(agent.log(tail=0), "results_error")
    assert "No space left on device" in errors[0]["message"] and "stays in the outbox" in errors[0]["message"]
    assert len(list((tmp_path / "outbox" / "pending").iterdir())) == 2
    assert "Traceback" not in agent.log(tail=0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_permissions_are_one_line(model_repo, tmp_path, auth_server):
    folder = tmp_path / "inbox"
    folder.mkdir()
    shutil.copy(SAMPLES / "fmnist-00000.png", folder / "locked.png")
    shutil.copy(SAMPLES / "fmnist-00001.png", folder / "open.png")
    (folder / "locked.png").chmod(0)
    agent = _agent(model_repo, tmp_path, [folder], auth_server.http_url, "--token", AUTH_TOKEN)
    _run_until(agent, tmp_path / "results.jsonl", 1)
    (err,) = events(agent.log(tail=0), "unreadable")
    assert "locked.png: cannot read it (permission denied)" in err["message"]


def _edge(*args: str, model_repo: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vitcodec.edge.cli", *args], capture_output=True, text=True,
                          env=child_env(model_repo), timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["{inbox}/a.png"], "a.png: not a folder"),
    (["{inbox}", "--model", "no-such-model"], "no-such-model"),
    (["{inbox}", "--server-bad"], None),
])
def test_watch_setup_errors_are_one_line(model_repo, tmp_path, args, message):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(b"x")
    argv = [a.format(inbox=inbox) for a in args]
    server = ["--server", "ftp://x"] if "--server-bad" in argv else ["--server", "http://127.0.0.1:9"]
    argv = [a for a in argv if a != "--server-bad"]
    result = _edge("watch", *argv, *server, "--outbox", str(tmp_path / "ob"), "--results",
                   str(tmp_path / "r.jsonl"), model_repo=model_repo)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert (message or "unsupported server URL") in lines[0]


def test_send_lists_failures_and_spools_them_for_watch(model_repo, tmp_path, auth_server):
    files = []
    for sample in sorted(SAMPLES.glob("fmnist-*.png"))[:3]:
        shutil.copy(sample, tmp_path / sample.name)
        files.append(tmp_path / sample.name)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    outbox = tmp_path / "outbox"
    dead = f"grpc://127.0.0.1:{free_port()}"
    result = _edge("send", *map(str, files), str(broken), "--server", dead, "--outbox", str(outbox), "--json",
                   "--timeout", "2", model_repo=model_repo)
    assert result.returncode == 1
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert sorted(line.split()[1].rstrip(":") for line in failed) == sorted(map(str, [*files, broken]))
    assert "4 of 4 images failed; 3 spooled to" in result.stderr
    assert len(list((outbox / "pending").iterdir())) == 3  # the unreadable image has no stream to spool
    results = tmp_path / "results.jsonl"
    drain = AgentProcess(["--server", auth_server.http_url, "--token", AUTH_TOKEN, "--outbox", str(outbox),
                          "--results", str(results), *FAST], model_repo, tmp_path)
    _run_until(drain, results, 3)
    assert sorted(r["file"] for r in read_results(results)) == sorted(map(str, files))
    assert list((outbox / "pending").iterdir()) == []
    # a later watch of the same folder recognises the spooled files and does not send them again
    again = _agent(model_repo, tmp_path, [tmp_path], auth_server.http_url, "--token", AUTH_TOKEN, logs="again")
    again.start()
    try:
        wait_for(lambda: events(again.log(tail=0), "unreadable"), 60, "the scan", 0.1, again.log)
        time.sleep(1.0)
    finally:
        assert again.terminate() == 0
    assert count_lines(results) == 3


def test_watch_is_registered_and_documented():
    from typer.main import get_command
    from vitcodec.edge.cli import app

    command = get_command(app).commands["watch"]
    names = {opt for p in command.params for opt in getattr(p, "opts", [])}
    assert {"--server", "--outbox", "--results", "--model", "--source", "--json", "--max-pending",
            "--max-outbox-mb", "--concurrency"} <= names
    root = Path(__file__).resolve().parents[1]
    assert "vitcodec-edge watch" in (root / "README.md").read_text()
    assert "vitcodec-edge watch" in (root / "docs" / "edge-agent.md").read_text()
    unit = (root / "deploy" / "vitcodec-edge-agent.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = exec_start.split("=", 1)[1].split()
    assert argv[0].endswith("vitcodec-edge") and argv[1] == "watch"
    ctx = command.make_context("watch", argv[2:], resilient_parsing=False)  # every flag exists
    ctx.close()
    assert "KillSignal=SIGTERM" in unit or "KillSignal" not in unit


def test_a_missing_folder_is_waited_for(model_repo, tmp_path, auth_server):
    late = tmp_path / "sdcard"
    agent = _agent(model_repo, tmp_path, [late], auth_server.http_url, "--token", AUTH_TOKEN)
    agent.start()
    try:
        wait_for(lambda: events(agent.log(tail=0), "watch_error"), 60, "the missing folder to be reported", 0.1,
                 agent.log)
        late.mkdir()
        shutil.copy(SAMPLES / "fmnist-00000.png", late)
        wait_for(lambda: count_lines(tmp_path / "results.jsonl") == 1, 60, "the answer", 0.1, agent.log)
    finally:
        assert agent.terminate() == 0, agent.log()
    assert events(agent.log(tail=0), "watch_resumed")


def test_compose_runs_the_agent():
    """The compose `edge-agent` service runs `watch` with flags the real CLI accepts, on the cloud service's gRPC
    port, with its state on a host folder kept out of the image and of git."""
    import yaml
    from typer.main import get_command
    from vitcodec.edge.cli import app

    root = Path(__file__).resolve().parents[1]
    services = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]
    agent = services["edge-agent"]
    assert agent["profiles"] == ["agent"] and agent["image"] == services["edge"]["image"]
    command = agent["command"]
    assert command[:2] == ["vitcodec-edge", "watch"]
    ctx = get_command(app).commands["watch"].make_context("watch", command[2:], resilient_parsing=False)
    ctx.close()
    cloud_grpc = services["cloud"]["command"][services["cloud"]["command"].index("--grpc-port") + 1]
    assert command[command.index("--server") + 1] == f"grpc://cloud:{cloud_grpc}"
    host, mount = agent["volumes"][0].split(":")
    for flag in ("--outbox", "--results", "--done-dir"):
        assert command[command.index(flag) + 1].startswith(mount + "/")
    assert command[2].startswith(mount + "/")
    assert host.lstrip("./") in (root / ".dockerignore").read_text().split()
    assert host.lstrip("./") + "/" in (root / ".gitignore").read_text().split()
