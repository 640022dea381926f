"""The server as a child process: free ports, start, wait for readiness, stop gracefully.

For programs that drive a real ``vitcodec-cloud serve`` from outside (the demo, the benchmarks, the tests that
kill and restart a server): one implementation of the parts that are easy to get subtly wrong (ports that are
taken, a server that dies while loading, Ctrl-C that must still stop the child, a kill -9 and a restart on the
same ports). Standard library only: no torch in the parent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TextIO

# console script -> module, for `python -m` when the script is not installed
CONSOLE_SCRIPTS = {"vitcodec-cloud": "vitcodec.cloud.cli", "vitcodec-edge": "vitcodec.edge.cli",
                   "vitcodec": "vitcodec.models.cli"}


class ServerStartError(RuntimeError):
    """The server exited, could not load its model, or was not ready in time; the message ends with its log."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP reached the parent: unwind through the `finally` blocks like Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def signals_unwind() -> Iterator[None]:
    """While inside: SIGTERM and SIGHUP raise `Interrupted` (SIGINT raises KeyboardInterrupt already)."""
    def raise_interrupted(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, raise_interrupted)
        except (ValueError, OSError):  # not the main thread
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def executable(argv: Sequence[str]) -> list[str]:
    """The argv to run: the console script beside this interpreter, else on PATH, else ``python -m``."""
    name, rest = argv[0], list(argv[1:])
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside), *rest]
    found = shutil.which(name)
    if found:
        return [found, *rest]
    return [sys.executable, "-m", CONSOLE_SCRIPTS[name], *rest]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def choose_port(preferred: int, host: str = "127.0.0.1") -> int:
    """`preferred` when it is free, any free port when it is 0 or taken."""
    return preferred if preferred and port_free(preferred, host) else free_port(host)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG; elsewhere
    skipped). The child also gets its own session, so Ctrl-C reaches the parent only, which stops it in order."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - best effort
            pass


def two_free_ports(host: str = "127.0.0.1") -> tuple[int, int]:
    """Two different free ports (HTTP, gRPC)."""
    first = free_port(host)
    second = free_port(host)
    while second == first:
        second = free_port(host)
    return first, second


class ServerProcess:
    """``vitcodec-cloud serve ...`` (any argv) in a subprocess, its output in a log file. It may be started again
    after `stop` or `kill`: the same argv, so the same ports (the log is appended to)."""

    def __init__(self, argv: list[str], log_path: Path, http_url: str, env: Mapping[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None, grpc_url: str | None = None,
                 model: str | None = None) -> None:
        """`ssl_context`: how to check the server's certificate when `http_url` is ``https://``; `grpc_url` and
        `model` (the model it serves, whose load failure `wait_ready` reports) when the caller knows them."""
        self.argv, self.log_path, self.http_url = argv, Path(log_path), http_url
        self.grpc_url, self.model = grpc_url, model
        self.ssl_context = ssl_context
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("GRPC_VERBOSITY", "ERROR")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log: TextIO | None = None

    @classmethod
    def serving(cls, model_repo: Path, model: str, log_path: Path, *args: str, host: str = "127.0.0.1",
                env: Mapping[str, str] | None = None, ssl_context: ssl.SSLContext | None = None) -> ServerProcess:
        """``vitcodec-cloud serve`` of one model of `model_repo` on two free ports of `host`, chosen once (a
        restart comes back on them); `args` are more flags of ``serve``. With `ssl_context` the URLs are
        ``https://`` and ``grpcs://`` (pass ``--tls-cert``/``--tls-key`` in `args`)."""
        http_port, grpc_port = two_free_ports(host)
        argv = ["vitcodec-cloud", "serve", "--model-repo", str(model_repo), "--model", model, "--host", host,
                "--http-port", str(http_port), "--grpc-port", str(grpc_port), *args]
        secure = "s" if ssl_context is not None else ""
        return cls(argv, log_path, f"http{secure}://{host}:{http_port}", env, ssl_context,
                   grpc_url=f"grpc{secure}://{host}:{grpc_port}", model=model)

    @property
    def grpc_port(self) -> int:
        if self.grpc_url is None:
            raise ValueError("this server's gRPC URL was not given")
        return int(self.grpc_url.rpartition(":")[2])

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("a" if self.starts else "w")
        self.starts += 1
        self.proc = subprocess.Popen(executable(self.argv), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        return self

    def start_ready(self, timeout: float = 120.0) -> ServerProcess:
        """`start`, then `wait_ready`; a server that never gets ready is stopped again before the error."""
        self.start()
        try:
            self.wait_ready(timeout, self.model)
        except BaseException:
            self.stop(30.0)
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=2, context=self.ssl_context) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return 0, b""

    def _load_failure(self, model: str) -> str | None:
        """Why `model` failed to load, when the server says it did (state UNAVAILABLE); None otherwise."""
        _, body = self._get("/v1/models")
        try:
            states = {m["name"]: m for m in json.loads(body).get("models", [])}
        except (ValueError, AttributeError):
            return None
        entry = states.get(model)
        if entry and entry.get("state") == "UNAVAILABLE":
            return entry.get("reason") or "see the log"
        return None

    def wait_ready(self, timeout: float, model: str | None = None) -> float:
        """Poll ``/v2/health/ready`` until 200 and return the seconds it took; fail early if the process
        exits or (given `model`) the server reports that the model cannot load."""
        assert self.proc is not None
        start = time.monotonic()
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(f"the server exited with code {code} before it was ready:\n{self.log_tail()}")
            status, _ = self._get("/v2/health/ready")
            if status == 200:
                return time.monotonic() - start
            if status == 503 and model is not None:
                reason = self._load_failure(model)
                if reason is not None:
                    raise ServerStartError(f"the server could not load {model}: {reason}\n{self.log_tail()}")
            if time.monotonic() - start > timeout:
                raise ServerStartError(f"the server was not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def kill(self) -> None:
        """kill -9 of the server's whole process group: no drain, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the server runs in its own session
            self.proc.wait(30)
        self.stop(0.0)  # reaped already: only closes the log

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL after `timeout` s; a second Ctrl-C kills at once."""
        try:
            if self.proc is None:
                return None
            if self.proc.poll() is not None:
                return self.proc.returncode
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except (subprocess.TimeoutExpired, KeyboardInterrupt, Interrupted):
                with suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                return self.proc.wait()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
