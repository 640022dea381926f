"""``make demo``: the whole system on one machine, with the project's own commands.

    python -m vitcodec.cloud.demo [--samples N] [--model fmnist-q2] [--http-port 8000] [--grpc-port 8001]

1. starts ``vitcodec-cloud serve`` (a subprocess, the default zoo model) and waits for ``/v2/health/ready``;
2. runs ``vitcodec-edge send`` on the bundled samples (``samples/``, see samples/README.md) over gRPC, then
   over REST, and prints one table of both plus a summary: bytes sent against the same images as PNG and as
   JPEG (quality 75), accuracy on the labelled samples, agreement of the two transports;
3. runs ``vitcodec-edge reconstruct`` on one sample, writing ``demo-out/<sample>-reconstructed.png``;
4. keeps the server up for ``--linger`` seconds if asked (to try it with curl or grpcurl), then
   stops the server: SIGTERM (it drains), SIGKILL after ``--stop-timeout``; on success, failure, Ctrl-C,
   SIGTERM or SIGHUP alike. The server also gets SIGTERM if this process dies without cleaning up (Linux).

The commands are built by `demo_commands`, which is also what ``docker-compose.yml`` runs (with the host
``cloud`` instead of ``127.0.0.1``; ``tests/test_deploy.py`` keeps the two identical). ``--samples N`` (or
``VITCODEC_DEMO_SAMPLES``) sends only the first N samples of ``labels.csv``. The model comes from the zoo,
or from ``VITCODEC_MODEL_REPO`` when set (read by the server and the edge alike). Torch-free: this process
only orchestrates; the server subprocess is the one that imports torch.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from vitcodec.packages import DEFAULT_MODEL

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
SAMPLES_DIR = Path("samples")
LABELS_FILE = "labels.csv"
UNLABELLED = "n/a"
OUT_DIR = Path("demo-out")
JPEG_QUALITY = 75
SAMPLES_ENV = "VITCODEC_DEMO_SAMPLES"
EXIT_OK, EXIT_FAILED, EXIT_SETUP, EXIT_INTERRUPTED = 0, 1, 2, 130


# ---- the commands (shared with docker-compose.yml) ----------------------------------------------------

def serve_command(model: str, http_port: int, grpc_port: int) -> list[str]:
    return ["vitcodec-cloud", "serve", "--model", model, "--http-port", str(http_port),
            "--grpc-port", str(grpc_port)]


def send_command(paths: Sequence[str], server: str, model: str) -> list[str]:
    return ["vitcodec-edge", "send", *paths, "--server", server, "--model", model, "--json"]


def reconstruct_command(path: str, server: str, model: str, output: str) -> list[str]:
    return ["vitcodec-edge", "reconstruct", path, "--server", server, "--model", model, "--output", output]


def reconstruction_path(sample: str, out_dir: str | Path = OUT_DIR) -> str:
    return str(Path(out_dir) / f"{Path(sample).stem}-reconstructed.png")


def demo_commands(host: str, http_port: int, grpc_port: int, model: str, send_paths: Sequence[str],
                  reconstruct: str, out_dir: str | Path = OUT_DIR) -> dict[str, list[str]]:
    """Every command of the demo, in order: ``serve``, ``send_grpc``, ``send_rest``, ``reconstruct``. The
    server binds all interfaces (its default); the native demo adds ``--host 127.0.0.1`` to ``serve``."""
    http, grpc = f"http://{host}:{http_port}", f"grpc://{host}:{grpc_port}"
    return {
        "serve": serve_command(model, http_port, grpc_port),
        "send_grpc": send_command(send_paths, grpc, model),
        "send_rest": send_command(send_paths, http, model),
        "reconstruct": reconstruct_command(reconstruct, http, model, reconstruction_path(reconstruct, out_dir)),
    }


_MODULES = {"vitcodec-cloud": "vitcodec.cloud.cli", "vitcodec-edge": "vitcodec.edge.cli"}


def executable(argv: Sequence[str]) -> list[str]:
    """The argv to run: the console script beside this interpreter, else on PATH, else ``python -m``."""
    name, rest = argv[0], list(argv[1:])
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside), *rest]
    found = shutil.which(name)
    if found:
        return [found, *rest]
    return [sys.executable, "-m", _MODULES[name], *rest]


def show(argv: Sequence[str]) -> str:
    return shlex.join(argv)


# ---- samples and sizes --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    path: str  # as given to the edge commands (relative to the working directory when possible)
    label: str  # ground truth, or "n/a"
    source: str = ""

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def labelled(self) -> bool:
        return self.label != UNLABELLED and bool(self.label)


class DemoError(RuntimeError):
    """A step cannot run (missing samples or model, server failed): the message says why and what to do."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def default_samples_dir() -> Path:
    """``samples/`` in the working directory (``make demo`` runs at the repository root), else the
    repository's next to this source tree."""
    if (SAMPLES_DIR / LABELS_FILE).is_file():
        return SAMPLES_DIR
    return Path(__file__).resolve().parents[1] / SAMPLES_DIR


def read_samples(folder: Path, limit: int | None = None) -> list[Sample]:
    """The samples listed in ``labels.csv``, in its order (the first ten cover every class)."""
    labels = folder / LABELS_FILE
    if not labels.is_file():
        raise DemoError(f"{labels} not found: the sample images ship in the repository's samples/ folder "
                        "(python -m vitcodec.models.samples makes them again)", EXIT_SETUP)
    with labels.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    samples = []
    for row in rows:
        path = folder / row["file"]
        if not path.is_file():
            raise DemoError(f"{path} is listed in {labels} but missing", EXIT_SETUP)
        samples.append(Sample(str(path), row.get("label") or UNLABELLED, row.get("source", "")))
    if not samples:
        raise DemoError(f"{labels} lists no images", EXIT_SETUP)
    return samples[:limit] if limit else samples


def encoded_sizes(path: str | Path) -> tuple[int, int]:
    """(PNG bytes, JPEG q75 bytes) of an image file's pixels, both encoded here by Pillow (PNG optimised)."""
    with Image.open(path) as im:
        im.load()
        image = im.convert("L" if im.mode in ("L", "1", "I;16", "I", "F") else "RGB")
    png, jpeg = io.BytesIO(), io.BytesIO()
    image.save(png, format="PNG", optimize=True)
    image.save(jpeg, format="JPEG", quality=JPEG_QUALITY)
    return len(png.getvalue()), len(jpeg.getvalue())


def psnr(a_path: str | Path, b_path: str | Path) -> float:
    """PSNR (dB) between two images of the same size, in the first one's mode."""
    with Image.open(a_path) as a, Image.open(b_path) as b:
        mode = "L" if a.mode == "L" else "RGB"
        x = np.asarray(a.convert(mode), np.float64)
        y = np.asarray(b.convert(mode), np.float64)
    if x.shape != y.shape:
        raise ValueError(f"sizes differ: {x.shape} vs {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


# ---- results ------------------------------------------------------------------------------------------

@dataclass
class Summary:
    images: int = 0
    labelled: int = 0
    correct: dict[str, int] = field(default_factory=dict)  # transport -> correct predictions
    errors: dict[str, int] = field(default_factory=dict)  # transport -> failed images
    agree: int = 0  # images both transports labelled identically
    compared: int = 0
    stream_bytes: int = 0  # labelled (Fashion-MNIST) images only: like for like with PNG/JPEG
    png_bytes: int = 0
    jpeg_bytes: int = 0
    other_images: int = 0  # the unlabelled colour drawings
    other_stream_bytes: int = 0
    other_png_bytes: int = 0
    median_latency_ms: dict[str, float] = field(default_factory=dict)

    def accuracy(self, transport: str) -> float:
        return self.correct.get(transport, 0) / self.labelled if self.labelled else math.nan

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["accuracy"] = {t: self.accuracy(t) for t in self.correct}
        return out


def rows_by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {Path(str(row.get("file", ""))).name: row for row in rows}


def summarise(samples: list[Sample], results: dict[str, list[dict[str, Any]]],
              sizes: dict[str, tuple[int, int]]) -> Summary:
    """Accuracy per transport, transport agreement, and bytes against PNG/JPEG (labelled images)."""
    s = Summary(images=len(samples), labelled=sum(x.labelled for x in samples))
    by_transport = {t: rows_by_name(rows) for t, rows in results.items()}
    for transport, rows in by_transport.items():
        s.correct[transport] = sum(1 for x in samples if x.labelled and rows.get(x.name, {}).get("label") == x.label)
        s.errors[transport] = sum(1 for x in samples if "label" not in rows.get(x.name, {}))
        latencies = [r["latency_ms"] for r in rows.values() if "latency_ms" in r]
        if latencies:
            s.median_latency_ms[transport] = statistics.median(latencies)
    transports = list(by_transport)
    for x in samples:
        labels = [by_transport[t].get(x.name, {}).get("label") for t in transports]
        if len(labels) > 1 and all(labels):
            s.compared += 1
            s.agree += len(set(labels)) == 1
        first = next((by_transport[t][x.name] for t in transports if "bytes" in by_transport[t].get(x.name, {})),
                     None)
        if first is None:
            continue
        png, jpeg = sizes[x.name]
        if x.labelled:
            s.stream_bytes += int(first["bytes"])
            s.png_bytes += png
            s.jpeg_bytes += jpeg
        else:
            s.other_images += 1
            s.other_stream_bytes += int(first["bytes"])
            s.other_png_bytes += png
    return s


def results_table(samples: list[Sample], results: dict[str, list[dict[str, Any]]]) -> Table:
    transports = list(results)
    by_transport = {t: rows_by_name(rows) for t, rows in results.items()}
    table = Table(title="edge -> cloud: classification from the bitstream", title_justify="left")
    for name, justify in (("file", "left"), ("truth", "left"), ("bytes", "right"), ("bpp", "right"),
                          ("predicted", "left"), ("confidence", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for t in transports:
        table.add_column(f"{t} latency", justify="right")
    for x in samples:
        rows = [by_transport[t].get(x.name, {}) for t in transports]
        first = next((r for r in rows if "label" in r), None)
        if first is None:
            error = next((r.get("error") for r in rows if r.get("error")), "no answer")
            table.add_row(x.name, x.label, "", "", f"[red]{error}[/red]", "", *("" for _ in transports))
            continue
        predicted = first["label"]
        if any("label" in r and r["label"] != predicted for r in rows):
            predicted += " [yellow](transports disagree)[/yellow]"
        if x.labelled:
            predicted = f"[green]{predicted}[/green]" if first["label"] == x.label else f"[red]{predicted}[/red]"
        latencies = [f"{r['latency_ms']:.1f} ms" if "latency_ms" in r else "[red]failed[/red]" for r in rows]
        table.add_row(x.name, x.label, str(first["bytes"]), f"{first['bpp']:.3f}", predicted,
                      f"{first['confidence']:.3f}", *latencies)
    return table


def summary_lines(s: Summary) -> list[str]:
    lines = []
    if s.labelled and s.stream_bytes:
        lines.append(f"Fashion-MNIST samples ({s.labelled}, 28x28 grey): bitstreams {s.stream_bytes:,} B in all "
                     f"({s.stream_bytes / s.labelled:.1f} B/image, headers included); the same images as PNG "
                     f"{s.png_bytes:,} B ({s.png_bytes / s.stream_bytes:.1f}x the bitstreams), as JPEG "
                     f"q{JPEG_QUALITY} {s.jpeg_bytes:,} B ({s.jpeg_bytes / s.stream_bytes:.1f}x)")
    if s.other_images:
        lines.append(f"colour drawings ({s.other_images}, unlabelled): {s.other_stream_bytes:,} bytes of bitstreams "
                     f"(the edge encodes the model's input: its size, grey) vs PNG {s.other_png_bytes:,} B of the "
                     "colour originals")
    for transport in s.correct:
        if s.labelled:
            lines.append(f"accuracy over {transport}: {s.correct[transport]}/{s.labelled} = "
                         f"{100 * s.accuracy(transport):.1f} % on the labelled samples")
    if s.compared:
        lines.append(f"gRPC and REST agree on {s.agree}/{s.compared} predictions")
    if s.median_latency_ms:
        lines.append("median latency per image (client side, network included): " + ", ".join(
            f"{t} {v:.1f} ms" for t, v in s.median_latency_ms.items()))
    failed = {t: n for t, n in s.errors.items() if n}
    if failed:
        lines.append("[red]failed images: " + ", ".join(f"{t} {n}" for t, n in failed.items()) + "[/red]")
    return lines


# ---- the server subprocess ----------------------------------------------------------------------------

class Interrupted(BaseException):
    """SIGTERM or SIGHUP reached the demo: unwind through the `finally` blocks like Ctrl-C does."""

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


def _die_with_parent() -> None:
    """In the child before exec: own session (Ctrl-C reaches the demo only, which then stops the server in
    order), and SIGTERM when the demo dies (Linux prctl PR_SET_PDEATHSIG; elsewhere skipped)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - best effort
            pass


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


class ServerProcess:
    """``vitcodec-cloud serve`` in a subprocess, its output in a log file."""

    def __init__(self, argv: list[str], log_path: Path, http_url: str) -> None:
        self.argv, self.log_path, self.http_url = argv, log_path, http_url
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: TextIO | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        env = dict(os.environ)
        env.setdefault("GRPC_VERBOSITY", "ERROR")
        self.proc = subprocess.Popen(executable(self.argv), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                     preexec_fn=_die_with_parent)

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
            with urllib.request.urlopen(self.http_url + path, timeout=2) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return 0, b""

    def wait_ready(self, model: str, timeout: float) -> float:
        """Poll ``/v2/health/ready`` until 200; fail early if the process exits or the model cannot load."""
        assert self.proc is not None
        start = time.monotonic()
        while True:
            code = self.proc.poll()
            if code is not None:
                raise DemoError(f"the server exited with code {code} before it was ready:\n{self.log_tail()}")
            status, _ = self._get("/v2/health/ready")
            if status == 200:
                return time.monotonic() - start
            if status == 503:
                _, body = self._get("/v1/models")
                try:
                    states = {m["name"]: m for m in json.loads(body).get("models", [])}
                except (ValueError, AttributeError):
                    states = {}
                entry = states.get(model)
                if entry and entry.get("state") == "UNAVAILABLE":
                    raise DemoError(f"the server could not load {model}: {entry.get('reason') or 'see the log'}\n"
                                    f"{self.log_tail()}")
            if time.monotonic() - start > timeout:
                raise DemoError(f"the server was not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def stop(self, timeout: float) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL after `timeout` s; a second Ctrl-C kills at once."""
        try:
            if self.proc is None:
                return None
            if self.proc.poll() is not None:
                return self.proc.returncode
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                return self.proc.wait(timeout)
            except (subprocess.TimeoutExpired, KeyboardInterrupt, Interrupted):
                with _suppress_lookup():
                    os.killpg(self.proc.pid, signal.SIGKILL)
                return self.proc.wait()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


@contextmanager
def _suppress_lookup() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:
        pass


# ---- the demo -----------------------------------------------------------------------------------------

def run_edge(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """An edge command; its stdout is captured (JSON lines), its stderr (progress, errors) passes through."""
    return subprocess.run(executable(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                          timeout=timeout, check=False)


def parse_json_lines(text: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def _check_model(model: str) -> str:
    from vitcodec.packages import ModelNotFoundError, resolve_model

    try:
        package = resolve_model(model)
    except ModelNotFoundError as exc:
        raise DemoError(f"{exc}.\nThe trained zoo ships in packages/zoo/ (`make zoo` trains it again); "
                        "VITCODEC_MODEL_REPO=DIR points the demo at another model repository.", EXIT_SETUP) from None
    if not package.compresses:
        raise DemoError(f"{model} makes no bitstreams (a step-one reference model): pick a compressing one",
                        EXIT_SETUP)
    return str(package.path)


def run_demo(args: argparse.Namespace, console: Console) -> int:
    samples_dir = Path(args.samples_dir) if args.samples_dir else default_samples_dir()
    samples = read_samples(samples_dir, args.samples)
    package_path = _check_model(args.model)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    whole_folder = args.samples is None or args.samples >= len(read_samples(samples_dir))
    send_paths = [str(samples_dir)] if whole_folder else [x.path for x in samples]
    http_port = choose_port(args.http_port)
    grpc_port = choose_port(args.grpc_port)
    while grpc_port == http_port:
        grpc_port = free_port()
    for wanted, got, what in ((args.http_port, http_port, "HTTP"), (args.grpc_port, grpc_port, "gRPC")):
        if wanted and wanted != got:
            console.print(f"[yellow]port {wanted} is taken: {what} uses {got}[/yellow]")
    host = "127.0.0.1"
    commands = demo_commands(host, http_port, grpc_port, args.model, send_paths, samples[0].path, out_dir)
    serve = commands["serve"] + ["--host", host]

    console.rule("[bold]vitcodec demo")
    console.print(f"model {args.model} ({package_path}); {len(samples)} sample image{'s' * (len(samples) != 1)} "
                  f"from {samples_dir}/")
    server = ServerProcess(serve, out_dir / "server.log", f"http://{host}:{http_port}")
    failed = False
    try:
        console.print(f"\n[bold]1.[/bold] cloud server: [cyan]{show(serve)}[/cyan]")
        server.start()
        console.print(f"   pid {server.pid}, log {server.log_path}; waiting for /v2/health/ready ...")
        took = server.wait_ready(args.model, args.ready_timeout)
        console.print(f"   ready after {took:.1f} s")

        results: dict[str, list[dict[str, Any]]] = {}
        for step, key, transport in ((2, "send_grpc", "gRPC"), (3, "send_rest", "REST")):
            console.print(f"\n[bold]{step}.[/bold] edge -> cloud over {transport}: [cyan]{show(commands[key])}[/cyan]")
            started = time.monotonic()
            proc = run_edge(commands[key], args.step_timeout)
            rows = parse_json_lines(proc.stdout)
            results[transport] = rows
            console.print(f"   {len(rows)} answer{'s' * (len(rows) != 1)} in {time.monotonic() - started:.1f} s "
                          f"(exit {proc.returncode})")
            if proc.returncode != 0:
                failed = True

        sizes = {x.name: encoded_sizes(x.path) for x in samples}
        console.print()
        console.print(results_table(samples, results))
        summary = summarise(samples, results, sizes)
        for line in summary_lines(summary):
            console.print(f"  {line}")
        failed = failed or any(summary.errors.values())

        console.print(f"\n[bold]4.[/bold] reconstruction: [cyan]{show(commands['reconstruct'])}[/cyan]")
        output = Path(commands["reconstruct"][-1])
        output.unlink(missing_ok=True)  # no stale file from an earlier run
        proc = run_edge(commands["reconstruct"], args.step_timeout)
        reconstruction: dict[str, Any] = {"file": str(output), "ok": proc.returncode == 0 and output.is_file()}
        if reconstruction["ok"]:
            try:
                reconstruction["psnr_db"] = psnr(samples[0].path, output)
                quality = f"PSNR {reconstruction['psnr_db']:.2f} dB against {samples[0].path}"
            except (OSError, ValueError) as exc:
                quality = f"no PSNR: {exc}"
            console.print(f"   wrote {output} ({quality})")
        else:
            failed = True
            console.print(f"   [red]reconstruction failed (exit {proc.returncode})[/red]")

        (out_dir / "results.json").write_text(json.dumps({
            "model": args.model, "http_port": http_port, "grpc_port": grpc_port, "server_pid": server.pid,
            "commands": commands, "samples": [x.__dict__ for x in samples], "results": results,
            "summary": summary.as_dict(), "reconstruction": reconstruction}, indent=1, default=str))
        if args.linger > 0:
            console.print(f"\n   the server stays up for {args.linger:.0f} s (HTTP http://{host}:{http_port}, gRPC "
                          f"{host}:{grpc_port}) so you can try it by hand; Ctrl-C stops it sooner")
            time.sleep(args.linger)
    finally:
        console.print(f"\n[bold]5.[/bold] stopping the server (pid {server.pid if server.proc else '-'}) ...")
        code = server.stop(args.stop_timeout)
        if code is not None:
            console.print(f"   stopped (exit {code})")
    console.rule("[red]demo finished with failures" if failed else "[green]demo finished")
    return EXIT_FAILED if failed else EXIT_OK


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vitcodec.cloud.demo",
                                     description="Serve the default model, send the sample images over gRPC and "
                                                 "REST, reconstruct one, stop the server.")
    parser.add_argument("--samples", type=int, default=None,
                        help=f"Send only the first N samples of labels.csv (or {SAMPLES_ENV}); default all.")
    parser.add_argument("--samples-dir", default=None, help="Folder with the images and labels.csv "
                                                            "(default: samples/).")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"Model to serve and encode with "
                                                               f"(default {DEFAULT_MODEL}).")
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                        help="HTTP port (default 8000; another free one if taken; 0 = any).")
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT,
                        help="gRPC port (default 8001; another free one if taken; 0 = any).")
    parser.add_argument("--out", default=str(OUT_DIR), help="Output folder (default demo-out/).")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="Seconds to wait for the server.")
    parser.add_argument("--step-timeout", type=float, default=300.0, help="Seconds for each edge command.")
    parser.add_argument("--linger", type=float, default=0.0,
                        help="Keep the server up this many seconds after the run, to try it by hand (default 0).")
    parser.add_argument("--stop-timeout", type=float, default=30.0,
                        help="Seconds between SIGTERM and SIGKILL when stopping the server.")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.samples is None:
        try:
            args.samples = _env_int(SAMPLES_ENV)
        except ValueError:
            parser.error(f"{SAMPLES_ENV} must be an integer")
    if args.samples is not None and args.samples < 1:
        parser.error("--samples must be at least 1")
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    try:
        with signals_unwind():
            return run_demo(args, console)
    except DemoError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return exc.code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted (Ctrl-C)[/yellow]")
        return EXIT_INTERRUPTED
    except Interrupted as exc:
        console.print(f"[yellow]interrupted ({exc})[/yellow]")
        return 128 + exc.signum


if __name__ == "__main__":
    raise SystemExit(main())
