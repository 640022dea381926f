"""``make demo``: the whole system on one machine, with the project's own commands.

    python -m vitcodec.demo [--samples N] [--model fmnist-q2] [--http-port 8000] [--grpc-port 8001]

1. starts ``vitcodec-cloud serve`` (a subprocess, the default zoo model) and waits for ``/v2/health/ready``;
2. runs ``vitcodec-edge send`` on the bundled samples (``samples/``, see samples/README.md) over gRPC, then
   over REST, and prints one table of both plus a summary: bytes sent against the same images as PNG and as
   JPEG (quality 75), accuracy on the labelled samples, agreement of the two transports;
3. runs ``vitcodec-edge reconstruct`` on one sample, writing ``demo-out/<sample>-reconstructed.png``;
4. keeps the server up for ``--linger`` seconds if asked (to try it with curl or grpcurl), then
   stops the server: SIGTERM (it drains), SIGKILL after ``--stop-timeout``; on success, failure, Ctrl-C,
   SIGTERM or SIGHUP alike. The server also gets SIGTERM if this process dies without cleaning up (Linux).

The commands are built by `demo_commands` (``demo/commands.py``), which is also what ``docker-compose.yml``
runs. ``--samples N`` (or ``VITCODEC_DEMO_SAMPLES``) sends only the first N samples of ``labels.csv``. The
model comes from the zoo, or from ``VITCODEC_MODEL_REPO`` when set (read by the server and the edge alike).
Torch-free: this process only orchestrates; the server subprocess is the one that imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from vitcodec.cloud.process import (
    Interrupted,
    ServerProcess,
    ServerStartError,
    choose_port,
    executable,
    free_port,
    signals_unwind,
)
from vitcodec.packages import DEFAULT_MODEL

from .commands import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, OUT_DIR, demo_commands, show
from .report import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SETUP,
    DemoError,
    Sample,
    Summary,
    default_samples_dir,
    encoded_sizes,
    psnr,
    read_samples,
    results_table,
    summarise,
    summary_lines,
)

SAMPLES_ENV = "VITCODEC_DEMO_SAMPLES"
HOST = "127.0.0.1"
Results = dict[str, list[dict[str, Any]]]  # transport -> the edge's JSON rows


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
    """The package path of a model that makes bitstreams; a setup error (with what to do) otherwise."""
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


@dataclass
class Plan:
    """What one run will do: the samples, the ports and the commands."""

    samples: list[Sample]
    samples_dir: Path
    package_path: str
    out_dir: Path
    http_port: int
    grpc_port: int
    commands: dict[str, list[str]]

    @property
    def serve(self) -> list[str]:
        return self.commands["serve"] + ["--host", HOST]


def _ports(args: argparse.Namespace, console: Console) -> tuple[int, int]:
    """The ports asked for, or free ones when they are taken (said on the console)."""
    http_port = choose_port(args.http_port)
    grpc_port = choose_port(args.grpc_port)
    while grpc_port == http_port:
        grpc_port = free_port()
    for wanted, got, what in ((args.http_port, http_port, "HTTP"), (args.grpc_port, grpc_port, "gRPC")):
        if wanted and wanted != got:
            console.print(f"[yellow]port {wanted} is taken: {what} uses {got}[/yellow]")
    return http_port, grpc_port


def plan_run(args: argparse.Namespace, console: Console) -> Plan:
    samples_dir = Path(args.samples_dir) if args.samples_dir else default_samples_dir()
    samples = read_samples(samples_dir, args.samples)
    package_path = _check_model(args.model)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    whole_folder = args.samples is None or args.samples >= len(read_samples(samples_dir))
    send_paths = [str(samples_dir)] if whole_folder else [x.path for x in samples]
    http_port, grpc_port = _ports(args, console)
    commands = demo_commands(HOST, http_port, grpc_port, args.model, send_paths, samples[0].path, out_dir)
    return Plan(samples, samples_dir, package_path, out_dir, http_port, grpc_port, commands)


def start_server(plan: Plan, server: ServerProcess, args: argparse.Namespace, console: Console) -> None:
    console.print(f"\n[bold]1.[/bold] cloud server: [cyan]{show(plan.serve)}[/cyan]")
    server.start()
    console.print(f"   pid {server.pid}, log {server.log_path}; waiting for /v2/health/ready ...")
    try:
        took = server.wait_ready(args.ready_timeout, model=args.model)
    except ServerStartError as exc:
        raise DemoError(str(exc)) from None
    console.print(f"   ready after {took:.1f} s")


def send_samples(plan: Plan, args: argparse.Namespace, console: Console) -> tuple[Results, bool]:
    """Steps 2 and 3: the samples over gRPC, then over REST; the rows per transport, and whether all went well."""
    results: Results = {}
    ok = True
    for step, key, transport in ((2, "send_grpc", "gRPC"), (3, "send_rest", "REST")):
        console.print(f"\n[bold]{step}.[/bold] edge -> cloud over {transport}: [cyan]{show(plan.commands[key])}[/cyan]")
        started = time.monotonic()
        proc = run_edge(plan.commands[key], args.step_timeout)
        rows = parse_json_lines(proc.stdout)
        results[transport] = rows
        console.print(f"   {len(rows)} answer{'s' * (len(rows) != 1)} in {time.monotonic() - started:.1f} s "
                      f"(exit {proc.returncode})")
        ok = ok and proc.returncode == 0
    return results, ok


def report_results(plan: Plan, results: Results, console: Console) -> Summary:
    """The table of both transports and the summary lines; returns the `Summary`."""
    sizes = {x.name: encoded_sizes(x.path) for x in plan.samples}
    console.print()
    console.print(results_table(plan.samples, results))
    summary = summarise(plan.samples, results, sizes)
    for line in summary_lines(summary):
        console.print(f"  {line}")
    return summary


def reconstruct_one(plan: Plan, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Step 4: the server's reconstruction of the first sample, and its PSNR against the original."""
    command = plan.commands["reconstruct"]
    console.print(f"\n[bold]4.[/bold] reconstruction: [cyan]{show(command)}[/cyan]")
    output = Path(command[-1])
    output.unlink(missing_ok=True)  # no stale file from an earlier run
    proc = run_edge(command, args.step_timeout)
    reconstruction: dict[str, Any] = {"file": str(output), "ok": proc.returncode == 0 and output.is_file()}
    if not reconstruction["ok"]:
        console.print(f"   [red]reconstruction failed (exit {proc.returncode})[/red]")
        return reconstruction
    original = plan.samples[0].path
    try:
        reconstruction["psnr_db"] = psnr(original, output)
        quality = f"PSNR {reconstruction['psnr_db']:.2f} dB against {original}"
    except (OSError, ValueError) as exc:
        quality = f"no PSNR: {exc}"
    console.print(f"   wrote {output} ({quality})")
    return reconstruction


def linger(plan: Plan, seconds: float, console: Console) -> None:
    if seconds > 0:
        console.print(f"\n   the server stays up for {seconds:.0f} s (HTTP http://{HOST}:{plan.http_port}, gRPC "
                      f"{HOST}:{plan.grpc_port}) so you can try it by hand; Ctrl-C stops it sooner")
        time.sleep(seconds)


def stop_server(server: ServerProcess, timeout: float, console: Console) -> None:
    console.print(f"\n[bold]5.[/bold] stopping the server (pid {server.pid if server.proc else '-'}) ...")
    code = server.stop(timeout)
    if code is not None:
        console.print(f"   stopped (exit {code})")


def run_demo(args: argparse.Namespace, console: Console) -> int:
    plan = plan_run(args, console)
    console.rule("[bold]vitcodec demo")
    console.print(f"model {args.model} ({plan.package_path}); {len(plan.samples)} sample "
                  f"image{'s' * (len(plan.samples) != 1)} from {plan.samples_dir}/")
    server = ServerProcess(plan.serve, plan.out_dir / "server.log", f"http://{HOST}:{plan.http_port}")
    try:
        start_server(plan, server, args, console)
        results, sent_ok = send_samples(plan, args, console)
        summary = report_results(plan, results, console)
        reconstruction = reconstruct_one(plan, args, console)
        failed = not sent_ok or any(summary.errors.values()) or not reconstruction["ok"]
        (plan.out_dir / "results.json").write_text(json.dumps({
            "model": args.model, "http_port": plan.http_port, "grpc_port": plan.grpc_port,
            "server_pid": server.pid, "commands": plan.commands, "samples": [x.__dict__ for x in plan.samples],
            "results": results, "summary": summary.as_dict(), "reconstruction": reconstruction},
            indent=1, default=str))
        linger(plan, args.linger, console)
    finally:
        stop_server(server, args.stop_timeout, console)
    console.rule("[red]demo finished with failures" if failed else "[green]demo finished")
    return EXIT_FAILED if failed else EXIT_OK


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vitcodec.demo",
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
