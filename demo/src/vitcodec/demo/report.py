"""The demo's inputs and findings: the bundled samples, their PNG/JPEG sizes and PSNR, and the summary of
what the two transports answered (accuracy, agreement, bytes against PNG and JPEG, and, when the served model
is calibrated, which images it flagged as unlike its training data)."""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.table import Table
from vitcodec import outputs

SAMPLES_DIR = Path("samples")
LABELS_FILE = "labels.csv"
UNLABELLED = "n/a"
JPEG_QUALITY = 75
UNFAMILIAR = "unlike the training data"  # how the report names an image the model flags (novelty > 1.0)
EXIT_OK, EXIT_FAILED, EXIT_SETUP, EXIT_INTERRUPTED = 0, 1, 2, 130


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
    return float(outputs.psnr(x[None], y[None], identical=math.inf)[0])


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
    # a calibrated model scores each image's novelty (> 1.0: out of distribution); uncalibrated ones give none
    novelty_scored: int = 0  # images whose answer carried a novelty
    flagged: list[str] = field(default_factory=list)  # labelled (Fashion-MNIST) images flagged
    other_flagged: list[str] = field(default_factory=list)  # colour drawings flagged

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
        if first.get("novelty") is not None:
            s.novelty_scored += 1
            if first.get("out_of_distribution"):
                (s.flagged if x.labelled else s.other_flagged).append(x.name)
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
    scored = any(row.get("novelty") is not None for rows in results.values() for row in rows)  # calibrated model
    table = Table(title="edge -> cloud: classification from the bitstream", title_justify="left")
    for name, justify in (("file", "left"), ("truth", "left"), ("bytes", "right"), ("bpp", "right"),
                          ("predicted", "left"), ("confidence", "right")) + ((("novelty", "right"),) if scored else ()):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for t in transports:
        table.add_column(f"{t} latency", justify="right")
    for x in samples:
        rows = [by_transport[t].get(x.name, {}) for t in transports]
        first = next((r for r in rows if "label" in r), None)
        if first is None:
            error = next((r.get("error") for r in rows if r.get("error")), "no answer")
            table.add_row(x.name, x.label, "", "", f"[red]{error}[/red]", "", *([""] if scored else []),
                          *("" for _ in transports))
            continue
        predicted = first["label"]
        if any("label" in r and r["label"] != predicted for r in rows):
            predicted += " [yellow](transports disagree)[/yellow]"
        if x.labelled:
            predicted = f"[green]{predicted}[/green]" if first["label"] == x.label else f"[red]{predicted}[/red]"
        if first.get("out_of_distribution"):
            predicted += f" [yellow]({UNFAMILIAR})[/yellow]"
        novelty = [] if not scored else ["" if first.get("novelty") is None else f"{first['novelty']:.2f}"]
        latencies = [f"{r['latency_ms']:.1f} ms" if "latency_ms" in r else "[red]failed[/red]" for r in rows]
        table.add_row(x.name, x.label, str(first["bytes"]), f"{first['bpp']:.3f}", predicted,
                      f"{first['confidence']:.3f}", *novelty, *latencies)
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
    if s.novelty_scored:  # only a calibrated model scores novelty; otherwise the report says nothing about it
        if s.other_images:
            names = f" ({', '.join(s.other_flagged)}: their labels are guesses)" if s.other_flagged else ""
            lines.append(f"colour drawings flagged as {UNFAMILIAR} (novelty > 1.0): "
                         f"{len(s.other_flagged)}/{s.other_images}{names}")
        if s.labelled:
            names = f" ({', '.join(s.flagged)})" if s.flagged else ""
            lines.append(f"Fashion-MNIST samples flagged as {UNFAMILIAR}: {len(s.flagged)}/{s.labelled}{names} "
                         "(by design about 4 % of in-distribution images exceed the threshold)")
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
