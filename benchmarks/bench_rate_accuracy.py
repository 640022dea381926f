"""Rate–accuracy: the zoo's real bitstreams against JPEG, WebP and AVIF with a pixel CNN, on the same axes.

    conventional:  image ─► JPEG / WebP / AVIF file (Pillow) ─► decode ─► pixel CNN ─► class
    ours:          image ─► edge encoder + range coder ─► bitstream ─► cloud ViT on ŷ ─► class

The pixel CNN (`vitcodec.models.pixel_cnn`) is trained by the project's own code on raw training images,
then, for each codec and quality, fine-tuned briefly on that codec's decoded training images (a user would
adapt the classifier to the codec: the strongest conventional baseline). Bytes are whole files (container
and headers included) for the codecs, whole streams (12-byte header included) for ours.

For each of our points the script interpolates, on every classical curve, the bytes that curve needs for
our accuracy (log-bytes linear in accuracy, on the curve's upper envelope), and reports the ratio against
the cheapest of them. When our accuracy is above a curve's range the curve never reaches it (ratio "> x"
against its largest file); below its range, its cheapest file already does better (ratio "≤ x").

    python benchmarks/bench_rate_accuracy.py --from-manifest      # full test split, zoo figures from the manifests
    python benchmarks/bench_rate_accuracy.py --limit 256 --epochs 1 --qualities jpeg=10,50 webp=5,50 avif=20,60

Trained CNN weights are cached under ``--cache`` (default runs/rate-accuracy, git-ignored), keyed by the
training images, epochs and seed, so a rerun only measures. Every figure is written as JSON
(benchmarks/results/rate_accuracy_<date>.json, or --json-out); such a file is what ``--codecs-from`` reads.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from common import add_results_args, machine_info, write_results

CODECS = ("jpeg", "webp", "avif")
# From each format's smallest file up to where the CNN's accuracy stops rising (28×28 grey images: JPEG 200–445
# bytes, WebP 97–263, AVIF 343–511; AVIF's container alone is about 300 bytes).
DEFAULT_QUALITIES = {"jpeg": (1, 5, 10, 20, 30, 50, 75), "webp": (0, 1, 5, 10, 25, 50, 75),
                     "avif": (0, 10, 25, 40, 55, 70)}
DEFAULT_MODELS = ("fmnist-q1", "fmnist-q2", "fmnist-q3", "fmnist-uncompressed")


# -- codecs -------------------------------------------------------------------------------------------------

def available_codecs() -> dict[str, bool]:
    from PIL import features

    return {"jpeg": bool(features.check("jpg")), "webp": bool(features.check("webp")),
            "avif": bool(features.check("avif"))}


def encode_file(codec: str, pixels: np.ndarray, quality: int) -> bytes:
    """One grey uint8 image -> a whole image file, with each format's best-compressing settings that a
    careful user would pick (optimised Huffman tables for JPEG, the slowest method for WebP)."""
    from PIL import Image

    buf = io.BytesIO()
    image = Image.fromarray(pixels, "L")
    if codec == "jpeg":
        image.save(buf, "JPEG", quality=quality, optimize=True)
    elif codec == "webp":
        image.save(buf, "WEBP", quality=quality, method=6)
    elif codec == "avif":
        image.save(buf, "AVIF", quality=quality)
    else:
        raise ValueError(f"unknown codec {codec!r}")
    return buf.getvalue()


def decode_file(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"))


def round_trip(codec: str, images: np.ndarray, quality: int,
               advance: Callable[[int], None] = lambda n: None) -> tuple[np.ndarray, np.ndarray]:
    """(decoded images, file sizes in bytes) for a stack of grey images."""
    decoded = np.empty_like(images)
    sizes = np.empty(len(images), dtype=np.int64)
    for i, pixels in enumerate(images):
        data = encode_file(codec, pixels, quality)
        sizes[i] = len(data)
        decoded[i] = decode_file(data)
        advance(1)
    return decoded, sizes


def mean_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the per-image PSNR on 0..255 (`vitcodec.outputs.psnr`: identical images 100 dB)."""
    from vitcodec.outputs import psnr

    return float(np.mean(psnr(a, b)))


# -- results ------------------------------------------------------------------------------------------------

@dataclass
class CodecPoint:
    codec: str
    quality: int
    bytes_per_image: float
    psnr: float
    top1_raw: float  # the CNN trained on raw images
    top1_finetuned: float  # the same CNN fine-tuned on this codec's decoded training images at this quality


@dataclass
class OurPoint:
    model: str
    top1: float
    bytes_per_image: float | None  # None: the uncompressed reference
    psnr: float | None
    n: int
    source: str  # "bitstreams" (measured now) or "manifest"
    ratios: dict[str, dict] = field(default_factory=dict)  # curve name -> interpolation result
    best: dict | None = None


def envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(bytes, accuracy) points -> the curve's upper envelope: sorted by bytes, keeping only points that beat
    every cheaper one in accuracy (a user never pays more bytes for less accuracy)."""
    front: list[tuple[float, float]] = []
    for b, a in sorted(points):
        if not front or a > front[-1][1]:
            front.append((b, a))
    return front


def bytes_at_accuracy(points: list[tuple[float, float]], accuracy: float) -> dict:
    """Bytes a curve needs for ``accuracy``: log-bytes interpolated linearly in accuracy on its envelope.

    Returns ``{"bytes": B, "where": "inside" | "above" | "below"}``: "above" means the curve never reaches
    this accuracy (B is its largest file, a lower bound), "below" that its cheapest file already exceeds it
    (B is that file, an upper bound).
    """
    front = envelope(points)
    if accuracy > front[-1][1]:
        return {"bytes": front[-1][0], "where": "above"}
    if accuracy <= front[0][1]:
        return {"bytes": front[0][0], "where": "below" if accuracy < front[0][1] else "inside"}
    for (b0, a0), (b1, a1) in zip(front, front[1:]):
        if a0 <= accuracy <= a1:
            t = (accuracy - a0) / (a1 - a0)
            return {"bytes": math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0))), "where": "inside"}
    raise AssertionError("unreachable: the envelope is increasing in accuracy")


def curves(points: list[CodecPoint]) -> dict[str, list[tuple[float, float]]]:
    """Classical curves by name ("WebP, fine-tuned CNN"): (bytes, top-1) per quality."""
    out: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        name = CODEC_NAMES[p.codec]
        out.setdefault(f"{name}, raw CNN", []).append((p.bytes_per_image, p.top1_raw))
        out.setdefault(f"{name}, fine-tuned CNN", []).append((p.bytes_per_image, p.top1_finetuned))
    return out


CODEC_NAMES = {"jpeg": "JPEG", "webp": "WebP", "avif": "AVIF"}


def attach_ratios(ours: list[OurPoint], classical: dict[str, list[tuple[float, float]]]) -> None:
    """For each compressed point: bytes on every curve at its accuracy, and the ratio against the best."""
    for point in ours:
        if point.bytes_per_image is None or not classical:
            continue
        for name, pts in classical.items():
            hit = bytes_at_accuracy(pts, point.top1)
            point.ratios[name] = hit | {"ratio": hit["bytes"] / point.bytes_per_image}
        # a curve that reaches the accuracy beats one that never does, whatever its largest file weighs
        reaching = {n: h for n, h in point.ratios.items() if h["where"] != "above"} or point.ratios
        name, hit = min(reaching.items(), key=lambda kv: kv[1]["bytes"])
        point.best = {"curve": name, **hit}


def ratio_text(hit: dict) -> str:
    sign = {"inside": "", "above": "> ", "below": "≤ "}[hit["where"]]
    return f"{sign}{hit['ratio']:.1f}×"


# -- the classifier -----------------------------------------------------------------------------------------

def cached_cnn(cache: Path, tag: str, build: Callable[[], object], train: Callable[[object], dict]):
    """Load ``cache/tag.pt`` or build, train and store it (the file records what trained it)."""
    import torch
    from vitcodec.models.pixel_cnn import load_pixel_cnn, save_pixel_cnn

    path = cache / f"{tag}.pt"
    if path.exists():
        return load_pixel_cnn(path), True
    torch.manual_seed(0)
    model = build()
    extra = train(model)
    save_pixel_cnn(path, model, **extra)
    return model, False


# -- the run ------------------------------------------------------------------------------------------------

def parse_qualities(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    if not items:
        return dict(DEFAULT_QUALITIES)
    out: dict[str, tuple[int, ...]] = {}
    for item in items:
        codec, _, values = item.partition("=")
        if codec not in CODECS or not values:
            raise SystemExit(f"error: --qualities takes CODEC=Q1,Q2,... with CODEC one of {', '.join(CODECS)}; "
                             f"got {item!r}")
        try:
            out[codec] = tuple(sorted({int(v) for v in values.split(",")}))
        except ValueError:
            raise SystemExit(f"error: qualities must be integers, got {item!r}") from None
        if any(not 0 <= q <= 100 for q in out[codec]):
            raise SystemExit(f"error: qualities must lie in 0..100, got {item!r}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, help="images per split (train and test) for a quick run")
    p.add_argument("--finetune-limit", type=int, default=10000,
                   help="decoded training images each fine-tune sees (default 10000; capped by --limit)")
    p.add_argument("--epochs", type=float, default=10.0, help="epochs of the raw-image CNN")
    p.add_argument("--finetune-epochs", type=float, default=1.0, help="epochs of each codec fine-tune")
    p.add_argument("--finetune-lr", type=float, default=5e-4, help="peak learning rate of each fine-tune")
    p.add_argument("--qualities", nargs="+", metavar="CODEC=Q,...",
                   help="e.g. jpeg=10,50 webp=5,50 avif=20,60 (codecs not named are skipped)")
    p.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS), help="zoo names or package paths")
    p.add_argument("--from-manifest", action="store_true",
                   help="read our figures from each package's manifest instead of evaluating")
    p.add_argument("--codecs-from", type=Path,
                   help="take the classical points and the raw CNN's top-1 from an earlier run's JSON report "
                        "(e.g. benchmarks/results/rate_accuracy_codecs_2026-12-01.json) instead of training the "
                        "CNNs and measuring the codecs again: for re-plotting a new zoo")
    p.add_argument("--cache", type=Path, default=Path("runs/rate-accuracy"), help="trained CNN weights")
    p.add_argument("--plot", type=Path, default=Path("docs/rate_accuracy.png"))
    add_results_args(p, "--json")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    qualities = parse_qualities(args.qualities)
    if args.limit is not None and args.limit < 1:
        raise SystemExit("error: --limit must be positive")
    import torch
    from rich.console import Console
    from rich.progress import Progress
    from vitcodec.models.data import load_fashion_mnist

    if args.threads:
        torch.set_num_threads(args.threads)
    err = Console(stderr=True)
    have = available_codecs()
    unavailable = [c for c in qualities if not have[c]]
    for codec in unavailable:
        err.print(f"{CODEC_NAMES[codec]} is not available in this Pillow: skipped")
    qualities = {c: q for c, q in qualities.items() if have[c]}

    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    if args.limit:
        train_x, train_y = train_x[:args.limit], train_y[:args.limit]
        test_x, test_y = test_x[:args.limit], test_y[:args.limit]
    ft_n = min(args.finetune_limit, len(train_x))
    t0 = time.perf_counter()
    machine = machine_info()
    earlier = read_report(args.codecs_from) if args.codecs_from else None
    with Progress(console=err, disable=args.no_progress, transient=True) as progress:
        if earlier is not None:
            raw_cached, raw_top1 = True, earlier["raw_cnn_top1"]
            points = [CodecPoint(**p) for p in earlier["codecs"]]
            ft_n = earlier["n_finetune"]
        else:
            raw, raw_cached = _raw_cnn(args, train_x, train_y, progress)
            raw_top1 = _accuracy(raw, test_x, test_y)
            points = [_codec_point(args, codec, q, raw, train_x[:ft_n], train_y[:ft_n], test_x, test_y, progress)
                      for codec, qs in qualities.items() for q in qs]
        ours = [_our_point(name, args, progress) for name in args.models]
    classical = curves(points)
    attach_ratios(ours, classical)
    report = {"machine": f"{machine['cpu_model']}, {machine['threads']} cores",
              "date": machine["date"][:16].replace("T", " ") + " UTC",
              "command": "python benchmarks/bench_rate_accuracy.py "
                         + " ".join(argv if argv is not None else sys.argv[1:]),
              "codecs_from": str(args.codecs_from) if earlier is not None else None,
              "n_train": len(train_x), "n_finetune": ft_n, "n_test": len(test_x), "epochs": args.epochs,
              "finetune_epochs": args.finetune_epochs, "raw_cnn_top1": raw_top1, "raw_cnn_cached": raw_cached,
              "unavailable": [CODEC_NAMES[c] for c in unavailable], "seconds": time.perf_counter() - t0,
              "codecs": [asdict(p) for p in points], "ours": [asdict(o) for o in ours]}
    print(markdown(report))
    if args.plot:
        plot(points, ours, raw_top1, args.plot)
        print(f"\nplot: {args.plot}")
    write_results("rate_accuracy", report, args, argv, machine=machine)
    return 0


def read_report(path: Path) -> dict[str, Any]:
    """An earlier run's figures: a results file (`common.write_results`), or the bare report that runs before
    2026-12-05 wrote with ``--json``."""
    document = json.loads(path.read_text())
    return document["results"] if "results" in document and "format" in document else document


def _raw_cnn(args, images: np.ndarray, labels: np.ndarray, progress):
    from vitcodec.models.pixel_cnn import FitSettings, PixelCNN, fit

    settings = FitSettings(epochs=args.epochs, seed=args.seed)
    task = progress.add_task("pixel CNN on raw images", total=None)

    def train(model) -> dict:
        start = time.perf_counter()
        fit(model, images, labels, settings, on_step=lambda s, n: progress.update(task, completed=s, total=n))
        return {"settings": asdict(settings) | {"n": len(images)}, "wall_s": time.perf_counter() - start}

    tag = f"pixel_cnn_raw_n{len(images)}_e{args.epochs:g}_s{args.seed}"
    model, cached = cached_cnn(args.cache, tag, PixelCNN, train)
    progress.remove_task(task)
    return model, cached


def _accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    from vitcodec.models.pixel_cnn import accuracy

    return accuracy(model, images, labels)


def _codec_point(args, codec: str, quality: int, raw, train_x: np.ndarray, train_y: np.ndarray,
                 test_x: np.ndarray, test_y: np.ndarray, progress) -> CodecPoint:
    import copy

    from vitcodec.models.pixel_cnn import FitSettings, fit

    label = f"{CODEC_NAMES[codec]} q{quality}"
    task = progress.add_task(f"{label}: encode/decode", total=len(test_x) + len(train_x))
    test_dec, sizes = round_trip(codec, test_x, quality, lambda n: progress.advance(task, n))
    tag = f"pixel_cnn_{codec}_q{quality}_raw-n{args.limit or 'all'}-e{args.epochs:g}_ft-n{len(train_x)}" \
          f"_e{args.finetune_epochs:g}_lr{args.finetune_lr:g}_s{args.seed}"
    settings = FitSettings(epochs=args.finetune_epochs, lr=args.finetune_lr, warmup_steps=0, seed=args.seed)

    def train(model) -> dict:
        model.load_state_dict(raw.state_dict())
        train_dec, _ = round_trip(codec, train_x, quality, lambda n: progress.advance(task, n))
        progress.update(task, description=f"{label}: fine-tune")
        fit(model, train_dec, train_y, settings)
        return {"settings": asdict(settings) | {"n": len(train_x), "codec": codec, "quality": quality}}

    tuned, cached = cached_cnn(args.cache, tag, lambda: copy.deepcopy(raw), train)
    progress.remove_task(task)
    return CodecPoint(codec, quality, float(sizes.mean()), mean_psnr(test_x, test_dec),
                      _accuracy(raw, test_dec, test_y), _accuracy(tuned, test_dec, test_y))


def _our_point(name: str, args, progress) -> OurPoint:
    from vitcodec.packages import resolve_model

    package = resolve_model(name)
    if args.from_manifest:
        m = package.manifest.get("metrics") or {}
        if "top1" not in m:
            raise SystemExit(f"error: {package.name} has no recorded figures; run without --from-manifest")
        return OurPoint(package.name, m["top1"], m.get("bytes_per_image"), m.get("psnr"), m.get("n", 0), "manifest")
    from vitcodec.models.evaluate import evaluate

    task = progress.add_task(f"{package.name}: bitstreams", total=args.limit or 10000)
    report = evaluate(str(package.path), "fashion-mnist", "test", args.limit,
                      on_batch=lambda n: progress.advance(task, n))
    progress.remove_task(task)
    source = "bitstreams" if package.compresses else "float latents"
    return OurPoint(package.name, report.top1, report.bytes_per_image, report.psnr, report.n, source)


# -- output -------------------------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    lines = [f"### Rate–accuracy on Fashion-MNIST ({report['n_test']} test images)", "",
             f"Machine: {report['machine']}; {report['date']}; `{report['command']}`", "",
             f"Pixel CNN: {report['epochs']:g} epoch(s) on {report['n_train']} raw training images "
             f"(top-1 on raw test images {100 * report['raw_cnn_top1']:.2f} %); each fine-tune "
             f"{report['finetune_epochs']:g} epoch(s) on {report['n_finetune']} decoded training images.", ""]
    if report.get("codecs_from"):
        lines += [f"Classical points and the raw CNN's top-1 read from `{report['codecs_from']}` (an earlier "
                  "run's measurements), not measured again.", ""]
    if report["unavailable"]:
        lines += [f"Not available in this Pillow (not measured): {', '.join(report['unavailable'])}.", ""]
    lines += ["| codec | quality | bytes / image | PSNR (dB) | top-1, raw CNN | top-1, fine-tuned CNN |",
              "|---|---|---|---|---|---|"]
    for p in report["codecs"]:
        lines.append(f"| {CODEC_NAMES[p['codec']]} | {p['quality']} | {p['bytes_per_image']:.1f} | {p['psnr']:.2f} | "
                     f"{100 * p['top1_raw']:.2f} % | {100 * p['top1_finetuned']:.2f} % |")
    lines += ["", "| ours | source | top-1 | bytes / image | PSNR (dB) | best classical at this accuracy | "
              "its bytes | bytes ratio |", "|---|---|---|---|---|---|---|---|"]
    for o in report["ours"]:
        psnr = f"{o['psnr']:.2f}" if o["psnr"] is not None else "-"
        if o["bytes_per_image"] is None:
            lines.append(f"| `{o['model']}` | {o['source']} (n={o['n']}) | {100 * o['top1']:.2f} % | uncompressed | "
                         f"{psnr} | - | - | - |")
            continue
        best = o["best"]
        best_cells = (f"{best['curve']} | {best['bytes']:.1f} | {ratio_text(best)}" if best else "- | - | -")
        lines.append(f"| `{o['model']}` | {o['source']} (n={o['n']}) | {100 * o['top1']:.2f} % | "
                     f"{o['bytes_per_image']:.1f} | {psnr} | {best_cells} |")
    names = sorted({name for o in report["ours"] for name in o["ratios"]})
    if names:
        lines += ["", "Bytes ratio against each classical curve at our accuracy ('> x': the curve never reaches "
                  "it, against its largest file; '≤ x': its cheapest file already does better):", "",
                  "| ours | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for o in report["ours"]:
            if o["ratios"]:
                lines.append(f"| `{o['model']}` | " + " | ".join(ratio_text(o["ratios"][n]) for n in names) + " |")
    return "\n".join(lines)


def plot(points: list[CodecPoint], ours: list[OurPoint], raw_top1: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"jpeg": "tab:orange", "webp": "tab:green", "avif": "tab:purple"}
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for codec in CODECS:
        pts = sorted((p for p in points if p.codec == codec), key=lambda p: p.bytes_per_image)
        if not pts:
            continue
        x = [p.bytes_per_image for p in pts]
        ax.plot(x, [100 * p.top1_raw for p in pts], "o--", color=colours[codec], alpha=0.6, markersize=4,
                label=f"{CODEC_NAMES[codec]} + CNN (raw-trained)")
        ax.plot(x, [100 * p.top1_finetuned for p in pts], "o-", color=colours[codec], markersize=4,
                label=f"{CODEC_NAMES[codec]} + CNN (fine-tuned per quality)")
    compressed = sorted((o for o in ours if o.bytes_per_image is not None),
                        key=lambda o: cast(float, o.bytes_per_image))  # None filtered out above
    if compressed:
        ax.plot([o.bytes_per_image for o in compressed], [100 * o.top1 for o in compressed], "*-", color="tab:red",
                markersize=13, label="ours (real bitstreams)")
        for o in compressed:
            ax.annotate(o.model, (o.bytes_per_image, 100 * o.top1), textcoords="offset points", xytext=(6, -12),
                        fontsize=8, color="tab:red")
    for o in ours:
        if o.bytes_per_image is None:
            ax.axhline(100 * o.top1, color="tab:red", linestyle=":", linewidth=1, label=f"{o.model} (no coding)")
    ax.axhline(100 * raw_top1, color="grey", linestyle=":", linewidth=1, label="pixel CNN on raw pixels")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image (whole files / whole streams, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Fashion-MNIST test split: rate–accuracy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
