"""What every benchmark shares: the machine it ran on, its results as JSON beside the printed table, and timing
loops with a warm-up and repeats.

Why one module: a figure is only worth keeping with its machine, date and commit, and a table on stdout is
read by people but not by tools. Each benchmark calls `add_results_args` on its parser and `write_results` at
the end, which writes ``benchmarks/results/<name>_<date>.json`` (or ``--json-out PATH``) holding the arguments,
the figures and `machine_info()`; an earlier file of the same name is never overwritten (``_2``, ``_3`` ...).
Standard library and numpy only: the torch-free benchmarks import it too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_DIR = HERE / "results"
RESULTS_FORMAT = 1  # bump when the layout of a results file changes


# -- the machine ---------------------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name (``model name`` in /proc/cpuinfo, as ``lscpu`` shows it), else what Python knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def physical_cores() -> int | None:
    """Distinct (package, core) pairs in /proc/cpuinfo; None where the file does not say (not Linux, some VMs)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores: set[tuple[str, str]] = set()
    for block in text.split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) or None


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask: what a container or taskset allows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def git_commit(repo: Path = REPO) -> dict[str, Any]:
    """HEAD's commit and whether the working tree differs from it (a figure of uncommitted code says so)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def machine_info() -> dict[str, Any]:
    """Where and when a figure was taken: CPU model, cores, threads, load, software versions, date, commit."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu_model": cpu_model(),
        "cores": physical_cores(),
        "threads": usable_cpus(),
        "logical_cpus": os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in load] if load else None,
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **git_commit(),
    }


def machine_line(info: Mapping[str, Any] | None = None) -> str:
    """One line for the head of a printed table: CPU, cores/threads, load, date, commit."""
    m = dict(info or machine_info())
    load = m.get("load_average_1_5_15")
    commit = (m.get("commit") or "unknown")[:10] + (" (modified)" if m.get("dirty") else "")
    return (f"{m['date'][:16].replace('T', ' ')} UTC · {m['cpu_model']} · {m['cores'] or '?'} cores, "
            f"{m['threads']} threads · load {load[0] if load else '?'} · commit {commit}")


# -- results files -------------------------------------------------------------------------------------------

def add_results_args(parser: argparse.ArgumentParser, *aliases: str) -> None:
    """``--json-out PATH`` (and any older spellings in `aliases`, e.g. ``--json``) on a benchmark's parser."""
    parser.add_argument("--json-out", *aliases, dest="json_out", type=Path, metavar="PATH",
                        help=f"where to write the results as JSON (default: {RESULTS_DIR.relative_to(REPO)}/"
                             "<benchmark>_<date>.json)")


def default_results_path(name: str, when: dt.date | None = None, folder: Path = RESULTS_DIR) -> Path:
    """``folder/<name>_<date>.json``, or ``<name>_<date>_2.json`` ... when that file exists already."""
    stem = f"{name}_{(when or dt.datetime.now(dt.timezone.utc).date()).isoformat()}"
    path, k = folder / f"{stem}.json", 2
    while path.exists():
        path, k = folder / f"{stem}_{k}.json", k + 1
    return path


def _plain(value: Any) -> Any:
    """JSON-ready: paths and numpy scalars/arrays to their plain forms, NaN and infinities to null."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, argparse.Namespace):
        return _plain(vars(value))
    return value


def results_document(name: str, results: Mapping[str, Any], args: argparse.Namespace | Mapping[str, Any] | None,
                     argv: Sequence[str] | None = None, machine: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON object a benchmark writes: what ran (name, command, arguments), where (machine) and its figures."""
    arguments = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    arguments = {k: v for k, v in arguments.items() if k != "json_out"}
    argv = list(sys.argv[1:] if argv is None else argv)
    return _plain({"format": RESULTS_FORMAT, "benchmark": name,
                   "command": shlex.join([f"benchmarks/{Path(sys.argv[0]).name}"
                                          if sys.argv and sys.argv[0].endswith(".py") else name, *argv]),
                   "arguments": arguments, "machine": dict(machine or machine_info()), "results": results})


def write_results(name: str, results: Mapping[str, Any], args: argparse.Namespace | Mapping[str, Any] | None = None,
                  argv: Sequence[str] | None = None, path: Path | None = None,
                  machine: Mapping[str, Any] | None = None) -> Path:
    """Write a benchmark's figures as JSON (see `results_document`) and say where on stderr; returns the path.
    `path` defaults to ``args.json_out``, else `default_results_path(name)`."""
    if path is None and isinstance(args, argparse.Namespace):
        path = getattr(args, "json_out", None)
    path = Path(path) if path is not None else default_results_path(name)
    document = results_document(name, results, args, argv, machine)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    os.replace(tmp, path)
    print(f"results: {path}", file=sys.stderr)
    return path


# -- timing --------------------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`; NaN when there are none."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def summary_ms(values_ms: Sequence[float], digits: int = 2) -> dict[str, float]:
    """Median and p90 of a list of milliseconds, rounded: the two figures the tables print per stage."""
    return {"median": round(percentile(values_ms, 50), digits), "p90": round(percentile(values_ms, 90), digits)}


def interleaved(stages: Mapping[str, Callable[[], object]], rounds: int, block: int = 1,
                warmup: int = 1) -> dict[str, list[float]]:
    """Milliseconds per call of each stage: `warmup` untimed rounds, then `rounds` rounds that each run every
    stage `block` times in a row, stages in turn.

    Why interleave: slow drift of a shared machine (other jobs, clocks) then lands on every stage alike instead
    of on whichever was timed last. Why blocks: thread pools (ONNX Runtime, OpenBLAS) keep spinning a while after
    a call and slow whatever runs next, so only the first call of a block pays for the previous stage.
    """
    if rounds < 1 or block < 1:
        raise ValueError(f"rounds and block must be at least 1, got {rounds} and {block}")
    for _ in range(warmup):
        for fn in stages.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(rounds):
        for name, fn in stages.items():
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of `repeats` calls of `fn` after `warmup` untimed ones."""
    return statistics.median(t / 1e3 for t in interleaved({"fn": fn}, repeats, warmup=warmup)["fn"])
