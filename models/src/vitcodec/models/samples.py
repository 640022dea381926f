"""Make the sample images that ship in ``samples/`` (what ``make demo`` and the compose ``edge`` service send).

    python -m vitcodec.models.samples [--out samples] [--count 16]

Two kinds of images, both made here, none downloaded:

- ``fmnist-NNNNN.png``: images of the Fashion-MNIST **test** split (index NNNNN), written unchanged (28x28
  grey). The first image of every class comes first, then the next ones in index order, so any prefix of 10
  or more covers every class. Labels go to ``labels.csv``.
- ``colour-*.png``: small colour drawings rendered by this script (procedural, 64x64 RGB). They have no
  ground truth (label ``n/a``); they show that the edge takes any image, converting it to the model's input
  (size and channels) on the device.

The output is deterministic: running the script again rewrites the same pixels and the same ``labels.csv``
(``tests/test_demo.py`` checks the committed files against it when the dataset is installed).
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LABELS_FILE = "labels.csv"
LABELS_HEADER = ("file", "label", "class_index", "source")
UNLABELLED = "n/a"
COLOUR_SIZE = 64


def pick_indexes(labels: np.ndarray, count: int) -> list[int]:
    """`count` test indexes: the first image of each class (in class order), then the next unused ones."""
    classes = sorted(set(int(c) for c in labels))
    first = [int(np.flatnonzero(labels == c)[0]) for c in classes]
    chosen = first[:count]
    for index in range(len(labels)):
        if len(chosen) >= count:
            break
        if index not in chosen:
            chosen.append(index)
    return chosen


# ---- colour drawings: simple shapes on a shaded background, all integer maths (deterministic) ----

def _background(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    ramp = np.linspace(0.0, 1.0, COLOUR_SIZE)[:, None, None]
    pixels = np.asarray(top, np.float64) * (1 - ramp) + np.asarray(bottom, np.float64) * ramp
    pixels = np.broadcast_to(pixels, (COLOUR_SIZE, COLOUR_SIZE, 3))
    return Image.fromarray(np.round(pixels).astype(np.uint8), "RGB")


def _tshirt() -> Image.Image:
    image = _background((20, 24, 48), (8, 8, 20))
    draw = ImageDraw.Draw(image)
    body = [(18, 10), (26, 8), (32, 13), (38, 8), (46, 10), (58, 22), (50, 29), (46, 25), (46, 56),
            (18, 56), (18, 25), (14, 29), (6, 22)]
    draw.polygon(body, fill=(214, 48, 49), outline=(250, 120, 110))
    draw.arc((25, 2, 39, 16), 20, 160, fill=(250, 200, 190), width=2)
    draw.rectangle((18, 40, 46, 44), fill=(245, 245, 245))
    return image


def _trousers() -> Image.Image:
    image = _background((30, 30, 30), (60, 52, 40))
    draw = ImageDraw.Draw(image)
    draw.polygon([(20, 6), (44, 6), (48, 60), (36, 60), (32, 22), (28, 60), (16, 60)], fill=(40, 90, 200),
                 outline=(140, 180, 255))
    draw.rectangle((20, 6, 44, 10), fill=(20, 40, 110))
    draw.line((32, 10, 32, 20), fill=(20, 40, 110), width=1)
    return image


def _bag() -> Image.Image:
    image = _background((10, 40, 30), (5, 15, 10))
    draw = ImageDraw.Draw(image)
    draw.arc((18, 6, 46, 34), 180, 360, fill=(120, 70, 20), width=4)
    draw.rounded_rectangle((10, 20, 54, 56), radius=6, fill=(230, 170, 40), outline=(255, 220, 120))
    draw.rectangle((28, 30, 36, 36), fill=(120, 70, 20))
    return image


def _sneaker() -> Image.Image:
    image = _background((40, 10, 40), (10, 5, 10))
    draw = ImageDraw.Draw(image)
    draw.polygon([(6, 44), (10, 26), (24, 24), (34, 34), (54, 38), (60, 46), (60, 52), (6, 52)],
                 fill=(40, 170, 90), outline=(180, 250, 200))
    draw.rectangle((6, 50, 60, 55), fill=(240, 240, 240))
    for x in (16, 21, 26):
        draw.line((x, 28, x + 4, 34), fill=(250, 250, 250), width=1)
    return image


COLOUR_DRAWINGS: dict[str, tuple[str, Callable[[], Image.Image]]] = {
    "colour-tshirt.png": ("t-shirt", _tshirt),
    "colour-trousers.png": ("trousers", _trousers),
    "colour-bag.png": ("bag", _bag),
    "colour-sneaker.png": ("sneaker", _sneaker),
}


def _write_png(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    path.write_bytes(buffer.getvalue())


def make_samples(out: Path, count: int = 16, fmnist_root: Path | None = None) -> list[tuple[str, str, str, str]]:
    """Write the samples and ``labels.csv`` into `out`; returns the label rows (without the header)."""
    from vitcodec.models.data import load_fashion_mnist
    from vitcodec.models.registry import FASHION_MNIST_LABELS

    images, labels = load_fashion_mnist("test", fmnist_root)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str]] = []
    for index in pick_indexes(labels, count):
        name = f"fmnist-{index:05d}.png"
        _write_png(Image.fromarray(images[index], "L"), out / name)
        cls = int(labels[index])
        rows.append((name, FASHION_MNIST_LABELS[cls], str(cls), f"fashion-mnist test #{index}"))
    for name, (what, draw) in COLOUR_DRAWINGS.items():
        _write_png(draw(), out / name)
        rows.append((name, UNLABELLED, "", f"drawn by vitcodec.models.samples ({what})"))
    with (out / LABELS_FILE).open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(LABELS_HEADER)
        writer.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitcodec.models.samples",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("samples"), help="Folder to write (default: samples).")
    parser.add_argument("--count", type=int, default=16, help="Fashion-MNIST test images (default 16).")
    parser.add_argument("--fmnist-dir", type=Path, default=None,
                        help="Folder of the IDX files (default: VITCODEC_FMNIST_DIR or the Debian package's).")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    rows = make_samples(args.out, args.count, args.fmnist_dir)
    print(f"wrote {len(rows)} images and {LABELS_FILE} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
