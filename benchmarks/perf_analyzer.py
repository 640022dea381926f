"""The live server under a stock load generator: Triton's ``perf_analyzer`` over the KServe v2 endpoints
(HTTP with binary tensors, and gRPC) at several concurrencies, against the raw batched decode + classify loop
measured in the same run.

    python benchmarks/perf_analyzer.py                       # fmnist-q2, concurrency 1 8 32, HTTP and gRPC
    python benchmarks/perf_analyzer.py --concurrency 8 --protocols grpc --window-ms 4000
    python benchmarks/perf_analyzer.py --server-arg=--backend --server-arg=onnxruntime
    python benchmarks/perf_analyzer.py --baseline-ref main --variant 'tree=' --rounds 3     # A/B: code
    python benchmarks/perf_analyzer.py --variant 'asyncio=--event-loop asyncio' --variant 'uvloop=--event-loop uvloop'

A/B on a shared machine: every ``--variant`` (and ``--baseline-ref``: that commit's server code, see
server_variants.py) runs as its own server, all started at once; each measurement goes to each variant in turn,
the order alternating between ``--rounds``, and the table gives medians and the ratio to the first variant.

What it sets up when missing (nothing is installed into the project's venv):
- ``perf_analyzer``: beside this interpreter, on PATH, or from the tritonclient wheel installed into a venv of
  its own (benchmarks/.cache/perf_analyzer-venv) with ``nvidia-cuda-runtime-cu12``, whose ``libcudart.so.12``
  the binary links against even on a CPU-only machine (it goes on LD_LIBRARY_PATH);
- the Debian package ``libb64-0d`` (apt-get, only when running as root).

Inputs are real: a few Fashion-MNIST test images (``workloads.encoded_streams``) encoded by the edge encoder
into ``fmnist-q2`` streams, handed to perf_analyzer as base64 BYTES (``--input-data`` JSON
``{"data": [{"BITSTREAM": {"b64": ...}}]}``, shape ``BITSTREAM:1``; the base64 holds the tensor's raw content,
which for BYTES is a 4-byte little-endian length before the stream).
The server runs in its own process (``vitcodec-cloud serve``, cloud/process.py). The raw loop is the same
model, in this process, with the server stopped: batches of ``--batch`` streams, one `decode_payloads` (h_s
once per batch) and one `classify_latents` each. The last column is the server's inferences/s over it.
Prints a markdown table and writes the figures as JSON (benchmarks/results/perf_analyzer_<date>.json, or
--json-out), as perf_analyzer itself writes CSV.
"""

from __future__ import annotations

import argparse
import base64
import csv
import glob
import json
import math
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import urllib.request
import venv
from pathlib import Path

import bench_server
from server_variants import Variant, baseline_variant, parse_variant, process_cpu_s, start_server
from vitcodec.cloud.process import ServerProcess
from workloads import encoded_streams

from common import add_results_args, machine_info, machine_line, write_results

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
PA_VENV = CACHE / "perf_analyzer-venv"
CUDART_GLOB = "lib/python3*/site-packages/nvidia/cuda_runtime/lib"


# -- perf_analyzer and what it needs ---------------------------------------------------------------------------

def _run_quiet(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed:\n{result.stdout[-2000:]}")


def find_perf_analyzer() -> Path:
    """perf_analyzer beside this interpreter, on PATH, or in (a fresh) benchmarks/.cache venv."""
    for candidate in (Path(sys.executable).parent / "perf_analyzer", PA_VENV / "bin" / "perf_analyzer"):
        if candidate.is_file():
            return candidate
    found = shutil.which("perf_analyzer")
    if found:
        return Path(found)
    print(f"installing perf_analyzer (tritonclient wheel) into {PA_VENV} ...", flush=True)
    venv.create(PA_VENV, with_pip=True)
    _run_quiet([str(PA_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "tritonclient[all]",
                "nvidia-cuda-runtime-cu12"], "pip install tritonclient")
    return PA_VENV / "bin" / "perf_analyzer"


def _has_libb64() -> bool:
    out = subprocess.run(["ldconfig", "-p"], stdout=subprocess.PIPE, text=True).stdout
    return "libb64.so.0d" in out


def perf_analyzer_env() -> dict[str, str]:
    """Environment with libcudart.so.12 on LD_LIBRARY_PATH (installed when no venv we know has it)."""
    if not _has_libb64():
        if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
            print("installing libb64-0d (apt) ...", flush=True)
            _run_quiet(["apt-get", "install", "-y", "-q", "libb64-0d"], "apt-get install libb64-0d")
        else:
            print("warning: libb64-0d is not installed and this is not root; perf_analyzer may not start",
                  file=sys.stderr)
    roots = [PA_VENV, Path(sys.prefix), Path("/tmp/patools")]
    dirs = [d for root in roots for d in glob.glob(str(root / CUDART_GLOB)) if glob.glob(f"{d}/libcudart.so.12*")]
    if not dirs:
        if not (PA_VENV / "bin" / "python").is_file():
            venv.create(PA_VENV, with_pip=True)
        print(f"installing nvidia-cuda-runtime-cu12 into {PA_VENV} ...", flush=True)
        _run_quiet([str(PA_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "nvidia-cuda-runtime-cu12"],
                   "pip install nvidia-cuda-runtime-cu12")
        dirs = glob.glob(str(PA_VENV / CUDART_GLOB))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*dirs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    return env


# -- inputs, the raw loop, the server --------------------------------------------------------------------------

def raw_loop(package, streams: list[bytes], batch: int, device: str, repeats: int, backend: str,
             threads: int = 0) -> float:
    """Images/s of the plain batched loop (parse, decode_payloads, classify_latents: bench_server's), over the
    streams cycled to at least 256 so that every timed run holds several batches."""
    work = (streams * (-(-256 // len(streams))))[:max(256, len(streams))]
    return bench_server.raw_loop(package, work, batch, device, threads, repeats, backend)


def start_variant(package, args, variant: Variant) -> tuple[ServerProcess, int, int]:
    serve_args = ["--device", args.device, "--max-batch-size", str(args.batch),
                  *(["--threads", str(args.threads)] if args.threads else []), *args.server_arg]
    return start_server(package, serve_args, variant, "vitcodec-pa-")


def streams_classified(http_port: int) -> float:
    """The server's count of classified streams (``vitcodec_streams_total``, kind classify) from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vitcodec_streams_total{") and 'kind="classify"' in line)


# -- perf_analyzer runs ------------------------------------------------------------------------------------------

def run_perf_analyzer(binary: Path, env: dict[str, str], model: str, protocol: str, port: int, concurrency: int,
                      data_file: Path, window_ms: int, timeout_s: float) -> dict[str, float]:
    """One perf_analyzer measurement; inferences/s and p50/p99 (ms) from its CSV report."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.csv"
        argv = [str(binary), "-m", model, "-u", f"127.0.0.1:{port}", "-i", protocol,
                "--concurrency-range", f"{concurrency}:{concurrency}", "--input-data", str(data_file),
                "--shape", "BITSTREAM:1", "--measurement-interval", str(window_ms), "--stability-percentage", "50",
                "--max-trials", "8", "-v", "-f", str(report)]
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                timeout=timeout_s)
        if result.returncode == 0 and report.is_file():
            row = list(csv.DictReader(report.open()))[-1]
            return {"rate": float(row["Inferences/Second"]), "p50": float(row["p50 latency"]) / 1e3,
                    "p99": float(row["p99 latency"]) / 1e3, "stable": True}
    # On a shared, busy machine the windows may never agree within the stability band: report the last
    # window's throughput (latency percentiles are only printed for a stable measurement).
    passes = re.findall(r"Pass \[\d+\] throughput: ([0-9.]+) infer/sec\. Avg latency: (\d+) usec", result.stdout)
    if not passes:
        raise RuntimeError(f"perf_analyzer ({protocol}, concurrency {concurrency}) failed:\n{result.stdout[-3000:]}")
    rate, avg_us = passes[-1]
    return {"rate": float(rate), "p50": float(avg_us) / 1e3, "p99": float("nan"), "stable": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fmnist-q2", help="model package name or path (default fmnist-q2)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--protocols", nargs="+", default=["http", "grpc"], choices=["http", "grpc"])
    parser.add_argument("--streams", type=int, default=16, help="distinct real streams perf_analyzer cycles through")
    parser.add_argument("--batch", type=int, default=32, help="server max batch size and the raw loop's batch")
    parser.add_argument("--window-ms", type=int, default=3000, help="perf_analyzer measurement window")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "onnxruntime-int8"],
                        help="the raw loop's backend (pass the same to the server with --server-arg)")
    parser.add_argument("--repeats", type=int, default=5, help="raw-loop runs (median)")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads of the server and the raw loop (0: the library's default)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for vitcodec-cloud serve (repeat; e.g. --server-arg=--threads=2)")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=SPEC",
                        help="a server configuration to compare: NAME=VALUE tokens are environment, the rest "
                             "server arguments (repeat; all run at once, measured in turn)")
    parser.add_argument("--baseline-ref", metavar="REF",
                        help="add a variant running the server code of git commit REF (first in the table)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every variant this many times, alternating their order; medians reported")
    add_results_args(parser)
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    if args.baseline_ref:
        variants.insert(0, baseline_variant(args.baseline_ref))
    if not variants:
        variants = [Variant("server")]

    from vitcodec.packages import resolve_model

    machine = machine_info()  # before the load: its load average says how quiet the machine was
    binary = find_perf_analyzer()
    env = perf_analyzer_env()
    package = resolve_model(args.model)
    streams = encoded_streams(package, args.streams)
    workdir = Path(tempfile.mkdtemp(prefix="vitcodec-pa-"))
    data_file = workdir / "input.json"
    # "b64" is the tensor's raw content: for BYTES that is each element's 4-byte little-endian length + bytes
    data_file.write_text(json.dumps({"data": [
        {"BITSTREAM": {"b64": base64.b64encode(struct.pack("<I", len(s)) + s).decode()}} for s in streams]}))

    servers = []
    try:
        for variant in variants:
            servers.append((variant, *start_variant(package, args, variant)))
        runs: dict[tuple[str, str, int], list[dict[str, float]]] = {}
        for round_ in range(args.rounds):
            for protocol in args.protocols:
                for concurrency in args.concurrency:
                    order = servers if round_ % 2 == 0 else servers[::-1]  # ABBA: drift hits both alike
                    for variant, server, http_port, grpc_port in order:
                        port = http_port if protocol == "http" else grpc_port
                        print(f"round {round_ + 1}/{args.rounds} {variant.label}: perf_analyzer {protocol} "
                              f"concurrency {concurrency} ...", file=sys.stderr, flush=True)
                        count0, cpu0 = streams_classified(http_port), process_cpu_s(server.pid)
                        result = run_perf_analyzer(binary, env, package.name, protocol, port, concurrency, data_file,
                                                   args.window_ms, timeout_s=max(120.0, 12 * args.window_ms / 1e3))
                        # server CPU per inference over the whole run (warm-up and every window included)
                        count = streams_classified(http_port) - count0
                        result["cpu_ms"] = (process_cpu_s(server.pid) - cpu0) / max(count, 1) * 1e3
                        runs.setdefault((variant.label, protocol, concurrency), []).append(result)
    finally:
        for _, server, _, _ in servers:
            server.stop(60.0)
    raw = raw_loop(package, streams, args.batch, args.device, args.repeats, args.backend, args.threads)

    print(f"# perf_analyzer against the live server — {package.name}, KServe v2 infer\n")
    print(f"{machine_line(machine)} · device {args.device} · "
          f"server batch {args.batch} · threads {args.threads or 'default'} · "
          f"{len(streams)} real streams of {statistics.mean(map(len, streams)):.0f} B mean · "
          f"window {args.window_ms} ms · server args {' '.join(args.server_arg) or '(defaults)'}\n")
    print(f"raw batched loop ({args.backend}, batch {args.batch}, parse + decode_payloads + classify_latents): "
          f"**{raw:.0f} images/s**\n")
    first = variants[0].label
    if len(variants) > 1:
        print(f"{args.rounds} round(s), every variant's servers up at once and measured in turn (order alternating); "
              f"medians over rounds. Variants:\n")
        for variant in variants:
            print(f"- **{variant.label}**: {variant.describe()}")
        print()
    head = "| variant " if len(variants) > 1 else ""
    ratio = f" | vs {first} " if len(variants) > 1 else ""
    print(f"{head}| protocol | concurrency | inferences/s | p50 ms | p99 ms | server CPU ms / inference "
          f"| vs raw loop {ratio}|")
    print("|" + "---|" * (1 if len(variants) > 1 else 0) + "---|---:|---:|---:|---:|---:|---:|"
          + ("---:|" if len(variants) > 1 else ""))
    rows = []
    for protocol in args.protocols:
        for concurrency in args.concurrency:
            base_rate = statistics.median(r["rate"] for r in runs[(first, protocol, concurrency)])
            for variant in variants:
                results = runs[(variant.label, protocol, concurrency)]
                rate = statistics.median(r["rate"] for r in results)
                p50 = statistics.median(r["p50"] for r in results)
                finite = [r["p99"] for r in results if not math.isnan(r["p99"])]
                p99 = statistics.median(finite) if finite else float("nan")
                stable = all(r["stable"] for r in results)
                cpu_ms = statistics.median(r["cpu_ms"] for r in results)
                rows.append({"variant": variant.label, "protocol": protocol, "concurrency": concurrency,
                             "inferences_per_s": rate, "p50_ms": p50, "p99_ms": p99, "stable": stable,
                             "server_cpu_ms": cpu_ms, "vs_raw_loop": rate / raw, "vs_first": rate / base_rate,
                             "runs": results})
                cells = [f"{'HTTP (binary)' if protocol == 'http' else 'gRPC'}", str(concurrency), f"{rate:.0f}",
                         f"{p50:.1f}{'' if stable else ' (avg, unstable)'}", f"{p99:.1f}",
                         f"{cpu_ms:.2f}", f"{rate / raw:.2f}x"]
                if len(variants) > 1:
                    cells = [variant.label, *cells, f"{rate / base_rate:.2f}x"]
                print("| " + " | ".join(cells) + " |")
    write_results("perf_analyzer", {"model": package.name, "streams": len(streams),
                                    "stream_bytes_mean": statistics.mean(map(len, streams)),
                                    "raw_loop_images_per_s": raw,
                                    "variants": [{"label": v.label, "config": v.describe()} for v in variants],
                                    "rows": rows}, args, argv, machine=machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
