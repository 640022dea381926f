"""Archive benchmark (issue 19): the archive's targets measured on real zoo streams, side by side with them.

Streams. ``--count`` distinct Fashion-MNIST images (test and training sets, then the same mirrored) are encoded
by the real edge encoder for fmnist-q2: the archive keeps a stream once (its id is the stream's hash), so every
entry must be a distinct real stream. The first ``--images`` are classified once by the real model (through
`reclassify_archive` on a seed archive) and their answers (top-5, novelty) reused cyclically: entry i holds
stream i with answer i mod n, at a distinct time (1 ms apart, oldest first).

Figures:
- (a) size: the SQLite file (after a checkpoint) holding ``--count`` entries, written through the store's own
  path (`SqliteArchive.add` and its writer thread, ``--flush-entries`` records a transaction); with fewer than
  10^6 entries also projected linearly to 10^6 (bytes per entry x 10^6). MB = 10^6 bytes.
- (b) list query: `SqliteArchive.list` at that size, ``--queries`` queries mixing no filter, a label, a
  confidence bound, a time bound, label and confidence together, and cursors (the next pages of a query, and
  pages starting at a random point of the archive); median and p95.
- (c) reconstruction by id: ``GET /v1/images/{id}/reconstruction`` of a real server (in-process,
  `BackgroundServer`, ``--threads`` intra-op threads) on that archive, over HTTP: cold (the id's first request,
  decoded on demand) and warm (the same id again, from the server's cache); median and p95.
- (d) reclassify: `reclassify_archive` (what ``vitcodec-cloud reclassify`` runs) with fmnist-q2 over the newest
  ``--reclassify`` entries, ``--threads`` threads, the classifier on ``--backend`` (default onnxruntime, the
  command's default); streams per second, writes included.

Usage::

    .venv/bin/python benchmarks/bench_archive.py --count 1000000 --threads 2

Prints a table (figure, measured, target, measured/target) and writes the figures as JSON
(benchmarks/results/archive_<date>.json, or --json-out). Figures from a busy machine are not figures.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import add_results_args, machine_info, machine_line, percentile, write_results

MODEL = "fmnist-q2"
MB = 1_000_000
TARGETS = {"size_mb_at_1e6": 120.0, "list_ms": 50.0, "reconstruct_ms": 30.0, "reclassify_per_s": 1000.0}


def real_streams(n: int, threads: int) -> tuple[list[bytes], Any]:
    """`n` fmnist-q2 streams of Fashion-MNIST test images (noise images without the dataset) and the package."""
    from vitcodec.edge.encoder import EdgeEncoder
    from vitcodec.packages import resolve_model

    package = resolve_model(MODEL)
    try:
        from vitcodec.models.data import load_fashion_mnist

        both = np.concatenate([load_fashion_mnist("test")[0], load_fashion_mnist("train")[0]])
        images = np.concatenate([both, both[:, :, ::-1]])[:n, :, :, None]
    except Exception as exc:  # noqa: BLE001 - the benchmark still runs, and says so
        print(f"warning: Fashion-MNIST not found ({exc}); encoding noise images", file=sys.stderr)
        images = np.random.default_rng(0).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    encoder = EdgeEncoder(package, threads=threads)
    streams = []
    for start in range(0, len(images), 256):
        streams += [r.stream for r in encoder.encode_pixels(np.ascontiguousarray(images[start:start + 256]))]
    return list(dict.fromkeys(streams)), package


def load_model(threads: int, backend: str = "torch") -> Any:
    import torch
    from vitcodec.cloud.backends import make_loader
    from vitcodec.cloud.repository import ModelRepository

    torch.set_num_threads(threads)
    repository = ModelRepository(None, [MODEL], loader=make_loader(backend, "cpu", threads), device="cpu")
    entry = repository.get(MODEL)
    repository.load(entry)
    if not entry.ready:
        raise SystemExit(f"cannot load {MODEL}: {entry.reason}")
    return entry


def answers_for(streams: list[bytes], entry: Any, folder: Path) -> list[Any]:
    """The model's real answer (a `Reclassification`: top-5, novelty) for each stream, via a seed archive."""
    from vitcodec.cloud.archive import ArchiveRecord, stream_id
    from vitcodec.cloud.archive_sqlite import SqliteArchive
    from vitcodec.cloud.reclassify import reclassify_archive
    from vitcodec.results import ClassScore

    seed = SqliteArchive(folder / "seed.db", flush_entries=4096, max_pending=len(streams) + 16)
    seed.start()
    for s in streams:
        seed.add(ArchiveRecord(stream_id(s), s, MODEL, entry.version, entry.model_id.hex(),
                               [ClassScore(0, "?", 0.0)], (28, 28)))
    seed.close()
    reclassify_archive(seed, entry)
    answers = []
    for s in streams:
        got = seed.get(stream_id(s))
        answers.append(got.reclassifications[0] if got and got.reclassifications else None)
    return answers


def build(path: Path, count: int, streams: list[bytes], answers: list[Any], entry: Any,
          flush_entries: int) -> dict[str, Any]:
    """Write `count` entries through `SqliteArchive.add` (its writer thread, batches of `flush_entries`)."""
    from vitcodec.cloud.archive import ArchiveRecord, now_us, stream_id
    from vitcodec.cloud.archive_sqlite import SqliteArchive

    real = [a for a in answers if a is not None]
    if count > len(streams):
        raise SystemExit(f"--count {count} needs as many distinct streams; only {len(streams)} were encoded")
    store = SqliteArchive(path, flush_entries=flush_entries, flush_interval_s=0.5, max_pending=4 * flush_entries)
    store.start()
    start_us = now_us() - count * 1000
    clients = [None, "camera-1", "camera-7"]
    t0 = time.perf_counter()
    for i in range(count):
        stream, answer = streams[i], real[i % len(real)]
        record = ArchiveRecord(stream_id(stream), stream, MODEL, entry.version, entry.model_id.hex(), answer.top,
                               (28, 28), answer.novelty, clients[i % 3], created_us=start_us + i * 1000)
        store.add(record)
        if (i + 1) % (2 * flush_entries) == 0:  # the queue is bounded (a full one drops): let the writer catch up
            store.sync(600.0)
        if i and i % 100_000 == 0:
            print(f"  {i:,} entries written ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    store.sync(600.0)
    seconds = time.perf_counter() - t0
    status = store.status()
    store.close()
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        pages = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
    size = path.stat().st_size
    if status.failures:
        raise SystemExit(f"the store lost {status.failures} entries while building: {status.error}")
    return {"entries": count, "distinct_answers": len(real), "file_bytes": size, "pages_bytes": pages,
            "bytes_per_entry": size / count, "mean_stream_bytes": statistics.mean(len(s) for s in streams[:count]),
            "write_seconds": round(seconds, 2), "writes_per_s": round(count / seconds)}


def list_latency(path: Path, queries: int, labels: list[str], seed: int = 0) -> dict[str, Any]:
    """Milliseconds per `list` call over a mix of filters and cursors."""
    from vitcodec.cloud.archive import ImageQuery
    from vitcodec.cloud.archive_sqlite import SqliteArchive

    store = SqliteArchive(path)
    rng = random.Random(seed)
    newest = store.list(ImageQuery(limit=1)).images[0].created_us
    oldest = next(iter(store.iter_streams(page=1)))[0].created_us
    times: list[float] = []
    kinds: dict[str, list[float]] = {}

    def timed(kind: str, query: ImageQuery) -> Any:
        t0 = time.perf_counter()
        page = store.list(query)
        ms = (time.perf_counter() - t0) * 1e3
        times.append(ms)
        kinds.setdefault(kind, []).append(ms)
        return page

    store.list(ImageQuery())  # warm-up: the first read opens the file
    while len(times) < queries:
        label = rng.choice(labels)
        since = rng.randint(oldest, newest)
        choices = {
            "newest": ImageQuery(limit=50),
            "label": ImageQuery(label=label, limit=50),
            "max_confidence": ImageQuery(max_confidence=0.6, limit=50),
            "since": ImageQuery(since_us=since, limit=50),
            "label+max_confidence": ImageQuery(label=label, max_confidence=0.8, limit=50),
            "cursor at random": ImageQuery(limit=50, after=(rng.randint(oldest, newest), "f" * 32)),
        }
        kind = rng.choice(list(choices))
        page = timed(kind, choices[kind])
        for _ in range(2):  # follow the cursor two pages on, as a person paging does
            if page.next_cursor is None:
                break
            last = page.images[-1]
            page = timed(f"{kind}, next page", ImageQuery(choices[kind].label, choices[kind].max_confidence,
                                                           choices[kind].since_us, 50, (last.created_us, last.id)))
    return {"queries": len(times), "median_ms": round(percentile(times, 50), 3),
            "p95_ms": round(percentile(times, 95), 3), "max_ms": round(max(times), 3),
            "by_kind_median_ms": {k: round(percentile(v, 50), 3) for k, v in sorted(kinds.items())}}


def reconstruct_latency(path: Path, n: int, threads: int) -> dict[str, Any]:
    """Cold and warm ``GET /v1/images/{id}/reconstruction`` on a real server over the archive."""
    import httpx
    from vitcodec.cloud.archive import ImageQuery
    from vitcodec.cloud.archive_sqlite import SqliteArchive
    from vitcodec.cloud.server import BackgroundServer
    from vitcodec.cloud.settings import Settings

    store = SqliteArchive(path)
    ids = [e.id for e in store.list(ImageQuery(limit=min(1000, max(n * 4, 50)))).images]
    ids = random.Random(1).sample(ids, min(n, len(ids)))
    # no _env_file=None: Settings' model_config already reads no .env file, and type checkers see only the
    # fields as __init__ parameters
    settings = Settings(models=[MODEL], host="127.0.0.1", http_port=0, grpc_port=0,
                        archive=str(path), torch_threads=threads, log_level="warning")
    cold: list[float] = []
    warm: list[float] = []
    with BackgroundServer(settings) as server, httpx.Client(base_url=server.http_url, timeout=60) as http:
        http.get(f"/v1/images/{ids[0]}/reconstruction")  # warm-up: the first decode builds the model's buffers
        for image_id in ids[1:]:
            for bucket, expected in ((cold, "miss"), (warm, "hit")):
                t0 = time.perf_counter()
                response = http.get(f"/v1/images/{image_id}/reconstruction")
                bucket.append((time.perf_counter() - t0) * 1e3)
                if response.status_code != 200 or response.headers.get("x-vitcodec-cache") != expected:
                    raise SystemExit(f"reconstruction of {image_id}: {response.status_code} "
                                     f"{response.headers.get('x-vitcodec-cache')} {response.text[:200]}")
    return {"requests": len(cold), "cold_median_ms": round(percentile(cold, 50), 3),
            "cold_p95_ms": round(percentile(cold, 95), 3), "warm_median_ms": round(percentile(warm, 50), 3),
            "warm_p95_ms": round(percentile(warm, 95), 3)}


def reclassify_rate(path: Path, entry: Any, newest: int, batch_size: int) -> dict[str, Any]:
    """`reclassify_archive` over the newest `newest` entries: streams per second, storing included."""
    from vitcodec.cloud.archive import ImageQuery
    from vitcodec.cloud.archive_sqlite import SqliteArchive
    from vitcodec.cloud.reclassify import reclassify_archive

    store = SqliteArchive(path)
    total = store.count()
    skip = max(0, total - newest)
    since_us = None
    if skip:  # the created time of the first entry to include (times are distinct, 1 ms apart)
        first = store.list(ImageQuery(limit=1)).images[0].created_us
        since_us = first - (newest - 1) * 1000
    t0 = time.perf_counter()
    report = reclassify_archive(store, entry, since_us, batch_size)
    seconds = time.perf_counter() - t0
    return {"streams": report.total, "reclassified": report.reclassified, "changed": report.changed,
            "seconds": round(seconds, 2), "streams_per_s": round(report.reclassified / seconds, 1)}


def table(figures: dict[str, Any], count: int) -> list[tuple[str, float, float, str]]:
    """(figure, measured, target, direction) rows; direction '<=' or '>='."""
    size = figures["size"]
    mb = size["file_bytes"] / MB
    rows = [(f"SQLite file, {count:,} entries (MB)", mb, TARGETS["size_mb_at_1e6"] * count / 1e6, "<=")]
    if count != 1_000_000:
        rows.append(("  projected to 10^6 entries (MB)", size["bytes_per_entry"], TARGETS["size_mb_at_1e6"], "<="))
        rows[-1] = (rows[-1][0], size["bytes_per_entry"] * 1e6 / MB, rows[-1][2], "<=")
    listing, rec, again = figures["list"], figures["reconstruct"], figures["reclassify"]
    rows += [("list query, median (ms)", listing["median_ms"], TARGETS["list_ms"], "<="),
             ("list query, p95 (ms)", listing["p95_ms"], TARGETS["list_ms"], "<="),
             ("reconstruction by id, cold, median (ms)", rec["cold_median_ms"], TARGETS["reconstruct_ms"], "<="),
             ("reconstruction by id, cold, p95 (ms)", rec["cold_p95_ms"], TARGETS["reconstruct_ms"], "<="),
             ("reconstruction by id, warm, median (ms)", rec["warm_median_ms"], TARGETS["reconstruct_ms"], "<="),
             ("reclassify (streams/s)", again["streams_per_s"], TARGETS["reclassify_per_s"], ">=")]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="entries in the archive (default 10^6)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (server and reclassify; default 2)")
    parser.add_argument("--images", type=int, default=4000, help="streams classified; their answers reused cyclically")
    parser.add_argument("--queries", type=int, default=300, help="list queries timed")
    parser.add_argument("--reconstructions", type=int, default=100, help="archived ids reconstructed (cold, warm)")
    parser.add_argument("--reclassify", type=int, default=20_000, help="newest entries reclassified")
    parser.add_argument("--flush-entries", type=int, default=8192, help="records per transaction while building")
    parser.add_argument("--batch-size", type=int, default=256, help="reclassify batch size")
    parser.add_argument("--backend", default="onnxruntime", help="reclassify's classifier runtime (its --backend; "
                                                                 "default onnxruntime, as the command's)")
    parser.add_argument("--workdir", type=Path, help="where the archive is built (default: a temporary folder, "
                                                     "removed after)")
    add_results_args(parser)
    args = parser.parse_args(argv)
    if args.count < 100:
        parser.error("--count must be at least 100")
    info = machine_info()
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="vitcodec-bench-archive-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "archive.db"
    if path.exists():
        parser.error(f"{path} exists already: pass another --workdir")
    try:
        print(f"encoding {args.count} real {MODEL} streams ...", file=sys.stderr)
        streams, _ = real_streams(args.count + args.count // 50 + 100, args.threads)  # a few encode alike
        entry = load_model(args.threads)
        answers = answers_for(streams[:args.images], entry, folder)
        print(f"writing {args.count:,} entries ...", file=sys.stderr)
        figures: dict[str, Any] = {"size": build(path, args.count, streams, answers, entry, args.flush_entries)}
        labels = sorted({a.top[0].label for a in answers if a is not None})
        print("list queries ...", file=sys.stderr)
        figures["list"] = list_latency(path, args.queries, labels)
        print("reconstructions through the server ...", file=sys.stderr)
        figures["reconstruct"] = reconstruct_latency(path, args.reconstructions + 1, args.threads)
        print("reclassify ...", file=sys.stderr)
        figures["reclassify"] = reclassify_rate(path, load_model(args.threads, args.backend),
                                                min(args.reclassify, args.count), args.batch_size)
        figures["reclassify"]["backend"] = args.backend
    finally:
        if args.workdir is None:
            shutil.rmtree(folder, ignore_errors=True)
    rows = table(figures, args.count)
    figures["targets"] = TARGETS
    figures["side_by_side"] = [{"figure": name.strip(), "measured": round(value, 3), "target": target,
                                "ratio": round(value / target, 3), "meets": value <= target if d == "<=" else
                                value >= target} for name, value, target, d in rows]
    print(machine_line(info))
    print("| figure | measured | target | measured / target |\n|---|---|---|---|")
    for name, value, target, direction in rows:
        print(f"| {name} | {value:,.2f} | {direction} {target:,.1f} | {value / target:.2f} |")
    write_results("archive", figures, args, argv, machine=info)


if __name__ == "__main__":
    main()
