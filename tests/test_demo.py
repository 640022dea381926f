"""`make demo` (demo/) and its samples: the real script against a real server subprocess on free ports
with a short sample set; the server is stopped on success, on Ctrl-C, SIGTERM, and when the demo is killed."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vitcodec.cloud import process
from vitcodec.demo import commands as demo_cmds
from vitcodec.demo import report as demo_report
from vitcodec.demo import run as demo_run

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


def _env(model_repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITCODEC_")}
    env.update(VITCODEC_MODEL_REPO=str(model_repo), PYTHONUNBUFFERED="1", GRPC_VERBOSITY="ERROR")
    return env


def _demo_argv(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vitcodec.demo", "--http-port", "0", "--grpc-port", "0", "--out", str(out),
            *extra]


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    return True


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# ---- the samples --------------------------------------------------------------------------------------

def test_samples_ship_with_labels():
    samples = demo_report.read_samples(SAMPLES)
    labelled = [s for s in samples if s.labelled]
    assert len(labelled) == 16 and len(samples) - len(labelled) == 4
    from vitcodec.models.registry import FASHION_MNIST_LABELS

    assert {s.label for s in labelled[:10]} == set(FASHION_MNIST_LABELS)  # any prefix of 10 covers every class
    for s in samples:
        with Image.open(s.path) as im:
            assert im.format == "PNG"
            if s.labelled:
                assert (im.mode, im.size) == ("L", (28, 28))
            else:
                assert im.mode == "RGB" and im.size[0] > 28
    assert "MIT" in (SAMPLES / "README.md").read_text()


def test_samples_are_what_the_script_makes(tmp_path):
    """The committed files are reproducible: same pixels, same labels.csv (needs the Fashion-MNIST package)."""
    from vitcodec.models.data import DataError
    from vitcodec.models.samples import make_samples

    try:
        make_samples(tmp_path)
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST is not installed: {exc}")
    assert (tmp_path / "labels.csv").read_text() == (SAMPLES / "labels.csv").read_text()
    for made in sorted(tmp_path.glob("*.png")):
        with Image.open(made) as a, Image.open(SAMPLES / made.name) as b:
            assert a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b)), made.name


def test_pick_indexes_covers_classes_first():
    from vitcodec.models.samples import pick_indexes

    labels = np.array([3, 3, 1, 0, 2, 1, 0])
    assert pick_indexes(labels, 4) == [3, 2, 4, 0]
    assert pick_indexes(labels, 6) == [3, 2, 4, 0, 1, 5]
    assert pick_indexes(labels, 2) == [3, 2]


# ---- the demo's pieces --------------------------------------------------------------------------------

def test_read_samples_limits_and_errors(tmp_path):
    first_three = [s.name for s in demo_report.read_samples(SAMPLES)[:3]]
    assert [s.name for s in demo_report.read_samples(SAMPLES, 3)] == first_three
    with pytest.raises(demo_report.DemoError) as err:
        demo_report.read_samples(tmp_path)
    assert err.value.code == demo_report.EXIT_SETUP
    (tmp_path / "labels.csv").write_text("file,label\nmissing.png,Bag\n")
    with pytest.raises(demo_report.DemoError, match="missing"):
        demo_report.read_samples(tmp_path)


def test_commands():
    commands = demo_cmds.demo_commands("h", 1, 2, "m", ["a.png", "b.png"], "samples/a.png", "out")
    assert commands["serve"] == ["vitcodec-cloud", "serve", "--model", "m", "--http-port", "1", "--grpc-port", "2"]
    assert commands["send_grpc"] == ["vitcodec-edge", "send", "a.png", "b.png", "--server", "grpc://h:2", "--model",
                                     "m", "--json"]
    assert commands["send_rest"][5] == "http://h:1"
    assert commands["reconstruct"][-2:] == ["--output", "out/a-reconstructed.png"]
    resolved = process.executable(commands["serve"])
    assert Path(resolved[0]).name in ("vitcodec-cloud", Path(sys.executable).name) and "serve" in resolved


def test_summary_counts_accuracy_bytes_and_agreement():
    Sample = demo_report.Sample
    samples = [Sample("s/a.png", "Bag"), Sample("s/b.png", "Coat"), Sample("s/c.png", "n/a")]
    grpc = [{"file": "s/a.png", "label": "Bag", "bytes": 30, "bpp": 0.3, "confidence": 0.9, "latency_ms": 5.0},
            {"file": "s/b.png", "label": "Bag", "bytes": 40, "bpp": 0.4, "confidence": 0.5, "latency_ms": 7.0},
            {"file": "s/c.png", "label": "Bag", "bytes": 50, "bpp": 0.5, "confidence": 0.5, "latency_ms": 9.0}]
    rest = [dict(grpc[0]), {"file": "s/b.png", "error": "boom", "status": 500}, dict(grpc[2], label="Coat")]
    sizes = {"a.png": (300, 400), "b.png": (350, 450), "c.png": (1000, 900)}
    s = demo_report.summarise(samples, {"gRPC": grpc, "REST": rest}, sizes)
    assert (s.images, s.labelled) == (3, 2)
    assert s.correct == {"gRPC": 1, "REST": 1} and s.errors == {"gRPC": 0, "REST": 1}
    assert (s.agree, s.compared) == (1, 2)  # b failed over REST; c disagrees
    assert (s.stream_bytes, s.png_bytes, s.jpeg_bytes) == (70, 650, 850)
    assert (s.other_images, s.other_stream_bytes, s.other_png_bytes) == (1, 50, 1000)
    assert s.median_latency_ms == {"gRPC": 7.0, "REST": 7.0}
    text = "\n".join(demo_report.summary_lines(s))
    assert "1/2 = 50.0 %" in text and "failed images: REST 1" in text and "9.3x the bitstreams" in text
    table = demo_report.results_table(samples, {"gRPC": grpc, "REST": rest})
    assert table.row_count == 3


def test_sizes_and_psnr(tmp_path):
    sample = demo_report.read_samples(SAMPLES)[0].path
    png, jpeg = demo_report.encoded_sizes(sample)
    assert 0 < png < 2000 and 0 < jpeg < 2000
    assert demo_report.psnr(sample, sample) == float("inf")
    noisy = np.asarray(Image.open(sample), np.int16) + 4
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(tmp_path / "n.png")
    assert 30 < demo_report.psnr(sample, tmp_path / "n.png") < 40


def test_choose_port_falls_back_when_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not process.port_free(port)
        assert process.choose_port(port) != port
    assert process.choose_port(0) > 0


def test_parse_json_lines_skips_noise():
    assert demo_run.parse_json_lines('warning\n{"a": 1}\n\n{"b": 2}\n') == [{"a": 1}, {"b": 2}]


def test_unknown_model_is_a_setup_error_without_a_server(tmp_path):
    proc = subprocess.run(_demo_argv(tmp_path / "out", "--model", "no-such-model"), cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == demo_report.EXIT_SETUP, proc.stdout + proc.stderr
    assert "unknown model 'no-such-model'" in proc.stdout and "VITCODEC_MODEL_REPO" in proc.stdout
    assert not (tmp_path / "out" / "server.log").exists()


# ---- the whole demo, for real -------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_demo_end_to_end(model_repo, tmp_path):
    out = tmp_path / "demo-out"
    started = time.monotonic()
    proc = subprocess.run(_demo_argv(out, "--samples", "3", "--stop-timeout", "20"), cwd=ROOT,
                          env=_env(model_repo), capture_output=True, text=True, timeout=280)
    took = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    report = json.loads((out / "results.json").read_text())
    names = [s["path"] for s in report["samples"]]
    assert names == [f"samples/{s.name}" for s in demo_report.read_samples(SAMPLES, 3)]
    for transport in ("gRPC", "REST"):
        rows = report["results"][transport]
        assert [r["file"] for r in rows] == names
        assert all("label" in r and r["bytes"] > 0 and r["model"] == "fmnist-q2" for r in rows), rows
    summary = report["summary"]
    assert summary["labelled"] == 3 and summary["errors"] == {"gRPC": 0, "REST": 0}
    assert summary["agree"] == summary["compared"] == 3  # the same stream gets the same answer on both
    assert summary["png_bytes"] > 0 and summary["jpeg_bytes"] > 0 and summary["stream_bytes"] > 0
    recon = Path(report["reconstruction"]["file"])
    assert report["reconstruction"]["ok"] and recon == out / f"{Path(names[0]).stem}-reconstructed.png"
    with Image.open(recon) as im:
        assert im.size == (28, 28)
    # the commands printed are the ones `docker-compose.yml` runs (up to host and ports)
    assert report["commands"]["send_grpc"][:2] == ["vitcodec-edge", "send"]
    for line in ("vitcodec-cloud serve --model fmnist-q2", "accuracy over gRPC", "stopped (exit 0)",
                 "demo finished"):
        assert line in output, output
    assert not _alive(report["server_pid"])
    print(f"demo with 3 samples: {took:.1f} s")


def _sigint_as_in_a_terminal() -> None:
    """A shell without job control starts background jobs with SIGINT ignored (CI runners can), and Python
    keeps an inherited SIG_IGN; Ctrl-C in a terminal finds the default disposition, so give the demo that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_demo(model_repo: Path, out: Path) -> tuple[subprocess.Popen[str], int]:
    """The demo in the background, up to the point where its server process exists; returns (demo, server pid).

    ``--linger`` keeps it running after its one sample, so a signal always finds it at work (without it a
    fast machine can finish the demo before the signal arrives)."""
    proc = subprocess.Popen(_demo_argv(out, "--samples", "1", "--stop-timeout", "10", "--linger", "90"), cwd=ROOT,
                            preexec_fn=_sigint_as_in_a_terminal,
                            env=_env(model_repo), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        match = re.search(r"pid (\d+), log", line)
        if match:
            return proc, int(match.group(1))
    proc.wait(10)
    raise AssertionError("the demo never started its server:\n" + "".join(seen))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig, code, when", [(signal.SIGINT, demo_report.EXIT_INTERRUPTED, "serving"),
                                             (signal.SIGTERM, 128 + signal.SIGTERM, "starting")])
def test_interrupt_stops_the_server(model_repo, tmp_path, sig, code, when):
    """Ctrl-C (SIGINT to the demo only: the server has its own session) once the server listens and loads
    its model, or SIGTERM while the server process is still starting."""
    proc, server_pid = _start_demo(model_repo, tmp_path / "out")
    try:
        assert _alive(server_pid)
        if when == "serving":
            log, deadline = tmp_path / "out" / "server.log", time.monotonic() + 90
            while "serving HTTP" not in log.read_text():
                assert time.monotonic() < deadline and _alive(server_pid), log.read_text()
                time.sleep(0.1)
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == code, rest
        assert "interrupted" in rest and "stopping the server" in rest
        assert not _alive(server_pid)
    finally:
        if proc.poll() is None:
            proc.kill()
        if _alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


@pytest.mark.timeout(120)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_server_dies_with_a_killed_demo(model_repo, tmp_path):
    """SIGKILL leaves the demo no chance to clean up: the server still gets SIGTERM (parent-death signal)."""
    proc, server_pid = _start_demo(model_repo, tmp_path / "out")
    try:
        proc.kill()
        proc.wait(10)
        assert _wait_dead(server_pid, 60), "the server outlived the demo"
    finally:
        if _alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


@pytest.mark.timeout(120)
def test_server_that_cannot_load_the_model_fails_the_demo(package, tmp_path):
    """A package whose cloud weights are damaged: the server never turns ready; the demo says why (not after
    its readiness timeout) and stops the server."""
    broken = tmp_path / "repo" / package.name / str(package.version)
    broken.mkdir(parents=True)
    (broken / "manifest.json").symlink_to(package.path / "manifest.json")
    for key in package.manifest["files"]:  # the bundled zoo keeps cloud files in vitcodec-cloud's folder
        (broken / package.file(key).name).symlink_to(package.file(key))
    weights = package.file("weights").name
    (broken / weights).unlink()
    (broken / weights).write_bytes(b"not a checkpoint")
    proc = subprocess.run(_demo_argv(tmp_path / "out", "--samples", "1", "--ready-timeout", "100"), cwd=ROOT,
                          env=_env(tmp_path / "repo"), capture_output=True, text=True, timeout=110)
    output = proc.stdout + proc.stderr
    assert proc.returncode == demo_report.EXIT_FAILED, output
    assert "could not load fmnist-q2" in output and "stopped" in output
    pid = int(re.search(r"pid (\d+), log", output).group(1))
    assert not _alive(pid)
