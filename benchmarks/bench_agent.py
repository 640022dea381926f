"""The edge agent's costs, measured side by side in one run:

1. one intake scan (`StabilityTracker.scan`, what `watch` does every --poll seconds) of a folder of N files,
   as milliseconds and as the share of one core it costs at the default poll interval;
2. N Fashion-MNIST images end to end through `vitcodec-edge watch` (durable outbox, fsynced results) against
   the same images through one `vitcodec-edge send` run, both against one `vitcodec-cloud serve` process.

    python benchmarks/bench_agent.py --n 1000
    python benchmarks/bench_agent.py --n 1000 --transport http

Every wait is bounded (--timeout). Prints a markdown table and writes the figures as JSON
(benchmarks/results/agent_<date>.json, or --json-out).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent_processes import child_env, count_lines, sample_images, wait_for, write_pngs
from server_variants import start_server

from common import add_results_args, machine_info, machine_line, write_results


def scan_ms(folder: Path, repeats: int) -> float:
    """Median wall time of one scan of `folder` (every file already known, as in steady state)."""
    from vitcodec.edge.agent.intake import StabilityTracker

    tracker = StabilityTracker(settle_s=0.0)
    tracker.scan([folder], [], lambda c: False)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tracker.scan([folder], [], lambda c: False)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="images")
    parser.add_argument("--transport", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--concurrency", type=int, default=8, help="uploads in flight, send and watch alike")
    parser.add_argument("--repeats", type=int, default=20, help="scans timed (median)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for each end-to-end run")
    add_results_args(parser)
    args = parser.parse_args(argv)

    from vitcodec.packages import resolve_model

    machine = machine_info()
    package = resolve_model("fmnist-q2")
    repo = package.path.parent.parent
    work = Path(tempfile.mkdtemp(prefix="vitcodec-bench-agent-"))
    try:
        images = sample_images(args.n)
        inbox = work / "inbox"
        write_pngs(images, inbox)
        scan = scan_ms(inbox, args.repeats)

        server, http_port, grpc_port = start_server(package, ["--max-queue-delay-ms", "5"], None,
                                                    "vitcodec-bench-agent-")
        url = f"grpc://127.0.0.1:{grpc_port}" if args.transport == "grpc" else f"http://127.0.0.1:{http_port}"
        env = child_env(repo)
        try:
            t0 = time.perf_counter()
            sent = subprocess.run([sys.executable, "-m", "vitcodec.edge.cli", "send", str(inbox), "--server", url,
                                   "--json", "--concurrency", str(args.concurrency)], capture_output=True,
                                  env=env, timeout=args.timeout)
            send_s = time.perf_counter() - t0
            if sent.returncode != 0:
                raise RuntimeError(f"send failed: {sent.stderr[-2000:]!r}")

            results = work / "results.jsonl"
            cmd = [sys.executable, "-m", "vitcodec.edge.cli", "watch", str(inbox), "--server", url, "--outbox",
                   str(work / "outbox"), "--results", str(results), "--poll", "0.5", "--settle", "0",
                   "--concurrency", str(args.concurrency), "--json"]
            t0 = time.perf_counter()
            with open(work / "agent.log", "wb") as log:
                agent = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                wait_for(lambda: count_lines(results) >= args.n, args.timeout, f"{args.n} answers", 0.05)
                watch_s = time.perf_counter() - t0
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.wait(60)
        finally:
            server.stop(40.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"# edge agent — {args.n} Fashion-MNIST images, fmnist-q2, {args.transport}, "
          f"concurrency {args.concurrency}\n")
    print(f"{machine_line(machine)}\n")
    print("| measurement | value |")
    print("|---|---:|")
    print(f"| one intake scan of {args.n} files | {scan:.1f} ms |")
    print(f"| share of one core at --poll 0.5 | {scan / 500 * 100:.1f} % |")
    print(f"| `send` (one shot, nothing durable), images/s | {args.n / send_s:.0f} |")
    print(f"| `watch` (outbox + fsynced results), images/s, from process start | {args.n / watch_s:.0f} |")
    print(f"| watch / send | {send_s / watch_s:.2f}x |")
    write_results("agent", {"images": args.n, "scan_ms": scan, "scan_core_share_at_poll_0_5": scan / 500,
                            "send_images_per_s": args.n / send_s, "watch_images_per_s": args.n / watch_s,
                            "watch_over_send": send_s / watch_s}, args, argv, machine=machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
