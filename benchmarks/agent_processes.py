"""Real processes for the edge agent's tests and benchmarks: a `vitcodec-cloud serve` subprocess that can be
killed and brought back on the same ports (`model_server`), a `vitcodec-edge watch` subprocess, and a TCP proxy of the
tests' own that drops and stalls connections. Every wait is bounded in time. Not a test module: the chaos tests
import it by name (pytest's pythonpath), bench_agent.py from its own folder.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from vitcodec.cloud import process
from vitcodec.cloud.process import free_port

__all__ = ["AgentProcess", "ChaosProxy", "assert_exactly_once", "child_env", "count_lines", "free_port",
           "model_server", "read_results", "sample_images", "wait_for", "write_pngs"]


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1,
             diagnostics: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnostics()}")


def child_env(model_repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITCODEC_")}
    env.update(VITCODEC_MODEL_REPO=str(model_repo), GRPC_VERBOSITY="ERROR", PYTHONUNBUFFERED="1")
    return env


def model_server(model_repo: Path, log_dir: Path, model: str = "fmnist-q2") -> process.ServerProcess:
    """`vitcodec-cloud serve` of one model (cloud/process.py's `ServerProcess`) on ports chosen once, so that
    after a kill -9 it comes back on the same ones. Not started: ``.start_ready()``."""
    return process.ServerProcess.serving(model_repo, model, log_dir / "server.log", "--log-level", "warning",
                                         "--max-queue-delay-ms", "5", env=child_env(model_repo))


class AgentProcess:
    """`vitcodec-edge watch` in its own process, stderr to a log file."""

    def __init__(self, args: list[str], model_repo: Path, log_dir: Path) -> None:
        self.args, self.model_repo, self.log_dir = args, model_repo, log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> AgentProcess:
        self.starts += 1
        log = open(self.log_dir / f"agent-{self.starts}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "vitcodec.edge.cli", "watch", *self.args],
                                     stdout=log, stderr=subprocess.STDOUT, env=child_env(self.model_repo))
        log.close()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def wait_started(self, timeout: float = 60.0) -> None:
        """Until this run has logged its ``start`` event (``--json``): its signal handlers are installed by then."""
        path = self.log_dir / f"agent-{self.starts}.log"
        wait_for(lambda: path.exists() and '"event": "start"' in path.read_text(errors="replace"), timeout,
                 "the agent to start", 0.05, self.log)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the clean exit; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self, tail: int = 4000) -> str:
        """The last `tail` characters of each run's log (0: all of it)."""
        texts = [(self.log_dir / f"agent-{i}.log").read_text(errors="replace") for i in range(1, self.starts + 1)]
        return "\n".join(t[-tail:] if tail else t for t in texts)


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def sample_images(n: int) -> np.ndarray:
    """n Fashion-MNIST test images (uint8, (n, 28, 28)); random ones without the Debian package."""
    from workloads import fashion_mnist_test

    images = fashion_mnist_test(n)
    if images is None:
        return np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return images[..., 0]


def write_pngs(images: np.ndarray, folder: Path, start: int = 0, prefix: str = "img") -> list[Path]:
    """PNGs written to a temporary name and renamed, as a well-behaved camera would."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images, start=start):
        final = folder / f"{prefix}-{i:05d}.png"
        tmp = folder / f".{final.name}.part"
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, final)
        paths.append(final)
    return paths


def assert_exactly_once(results_file: Path, sources: list[Path], outbox: Path) -> list[dict[str, Any]]:
    """Every source answered exactly once (no duplicates, none missing, none refused), outbox empty."""
    records = read_results(results_file)
    files = [r["source"]["path"] for r in records]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "an entry id answered twice"
    duplicates = {f for f in files if files.count(f) > 1} if len(files) != len(set(files)) else set()
    assert not duplicates, f"{len(duplicates)} images answered twice, e.g. {sorted(duplicates)[:3]}"
    expected = {str(p) for p in sources}
    missing = expected - set(files)
    assert not missing, f"{len(missing)} images without an answer, e.g. {sorted(missing)[:3]}"
    assert set(files) == expected
    assert not [r for r in records if r.get("rejected")], "an image was refused"
    assert all(r["label"] and r["top_k"] for r in records)
    assert list((outbox / "pending").iterdir()) == [], "outbox not empty"
    assert list((outbox / "tmp").iterdir()) == []
    return records


class ChaosProxy:
    """A TCP proxy on 127.0.0.1 between agent and server that, while `chaos` is on, every `period_s` drops all
    open connections or stalls them (holds every byte, then drops them after `stall_s`), and refuses some new
    connections outright. Threads: one accept loop, two pumps per connection."""

    def __init__(self, target_port: int, period_s: float = 2.0, stall_s: float = 5.0, seed: int = 0) -> None:
        self.target_port = target_port
        self.period_s, self.stall_s = period_s, stall_s
        self.rng = random.Random(seed)
        self.chaos = threading.Event()
        self.stalled = threading.Event()
        self.closing = threading.Event()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.stats = {"connections": 0, "refused": 0, "dropped": 0, "stalls": 0}
        self.threads = [threading.Thread(target=self._accept, daemon=True),
                        threading.Thread(target=self._havoc, daemon=True)]
        for t in self.threads:
            t.start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self.stats["connections"] += 1
            if self.chaos.is_set() and self.rng.random() < 0.3:
                self.stats["refused"] += 1
                _close(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self.lock:
                self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.stalled.is_set() and not self.closing.is_set():
                    time.sleep(0.05)  # hold the bytes: the peer sees a silent connection
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)

    def _drop_all(self) -> None:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for a, b in pairs:
            self.stats["dropped"] += 1
            _close(a)
            _close(b)

    def _havoc(self) -> None:
        while not self.closing.wait(self.period_s):
            if not self.chaos.is_set():
                continue
            if self.rng.random() < 0.5:
                self._drop_all()
            else:
                self.stats["stalls"] += 1
                self.stalled.set()
                self.closing.wait(self.stall_s)
                self._drop_all()
                self.stalled.clear()

    def close(self) -> None:
        self.closing.set()
        self.stalled.clear()
        _close(self.listener)
        self._drop_all()
        for t in self.threads:
            t.join(5)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
