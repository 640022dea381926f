"""Image and bitstream files on the edge device, as a library: finding images (`collect_images`), naming their
streams (`plan_outputs`), loading the encoder (`load_encoder`), encoding in batches (`encode_batches`, the one
batching path of ``encode``, ``send`` and the agent, so all three send the same bytes for the same file),
writing streams (`encode_files`) and reading a stream's header (`inspect_stream`).

The commands that print these rows live in ``edge/commands.py`` (``encode``, ``inspect``) and ``edge/cli.py``
(``send``, ``reconstruct``); the agent (``edge/agent/intake.py``) encodes through `encode_batches`. No torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitcodec.outputs import bits_per_pixel

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                            ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k", ".jfif", ".avif", ".heic", ".qoi"})
STREAM_SUFFIX = ".vcb"
DEFAULT_BATCH = 32  # images per ONNX Runtime call: big enough to amortise the call, small enough for devices


class EdgeInputError(ValueError):
    """Bad arguments: the command does nothing and exits 2."""


def collect_images(paths: list[Path], suffixes: frozenset[str] = IMAGE_SUFFIXES) -> list[tuple[Path, Path]]:
    """Expand files and folders into (image file, path relative to its output folder) pairs.

    Folders are searched recursively for files with one of `suffixes` (by default a common image suffix;
    ``send`` adds ``.vcb``), in sorted order, and keep their layout below the output folder; files named
    explicitly are taken whatever their suffix.
    """
    found: list[tuple[Path, Path]] = []
    for path in paths:
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            found += [(p, p.relative_to(path)) for p in images]
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif path.exists():
            raise EdgeInputError(f"{path}: not a regular file or folder")
        else:
            raise EdgeInputError(f"{path}: no such file or folder")
    seen: set[tuple[Path, Path]] = set()
    unique = []
    for source, rel in found:  # the same file named twice (or also inside a folder given) is encoded once
        key = (source.resolve(), rel)
        if key not in seen:
            seen.add(key)
            unique.append((source, rel))
    found = unique
    if not found:
        raise EdgeInputError("no images found in " + ", ".join(str(p) for p in paths))
    return found


def plan_outputs(images: list[tuple[Path, Path]], out_dir: Path) -> list[Path]:
    """One ``.vcb`` per image: ``out_dir/<relative path with .vcb>``; when two inputs would share a name
    (``a.png`` and ``a.jpg``), both keep their suffix (``a.png.vcb``). Clashes that remain are an error."""
    plain = [rel.with_suffix(STREAM_SUFFIX) for _, rel in images]
    counts: dict[Path, int] = {}
    for rel in plain:
        counts[rel] = counts.get(rel, 0) + 1
    outputs: list[Path] = []
    owners: dict[Path, Path] = {}
    for (source, rel), candidate in zip(images, plain):
        target = out_dir / (candidate if counts[candidate] == 1 else rel.with_name(rel.name + STREAM_SUFFIX))
        key = target.resolve() if target.exists() else target.absolute()
        if key in owners:
            if owners[key].resolve() == source.resolve():
                raise EdgeInputError(f"{source} is given twice")
            raise EdgeInputError(f"{owners[key]} and {source} would both be written to {target}")
        owners[key] = source
        outputs.append(target)
    return outputs


@dataclass
class EncodedFile:
    """One row of `encode`: what was written for one image, or why nothing was."""

    source: Path
    output: Path | None = None
    source_size: tuple[int, int] | None = None  # (H, W) of the file as read
    image_size: tuple[int, int] | None = None  # (H, W) coded, as the stream header says
    num_bytes: int = 0
    header_bytes: int = 0
    z_bytes: int = 0
    y_bytes: int = 0
    encode_ms: float = 0.0
    error: str | None = None

    @property
    def bpp(self) -> float:
        if not self.image_size:
            return 0.0
        return bits_per_pixel(self.num_bytes, self.image_size)

    def as_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"file": str(self.source), "error": self.error}
        return {"file": str(self.source), "output": str(self.output), "bytes": self.num_bytes,
                "bpp": round(self.bpp, 6), "header_bytes": self.header_bytes, "z_bytes": self.z_bytes,
                "y_bytes": self.y_bytes, "source_size": list(self.source_size or ()),
                "image_size": list(self.image_size or ()), "encode_ms": round(self.encode_ms, 3)}


def load_encoder(model: str | None, threads: int | None):
    """The model's `EdgeEncoder`; any failure to find or load it becomes an `EdgeInputError`."""
    from vitcodec.edge.encoder import EdgeEncoder
    from vitcodec.packages import ModelNotFoundError, resolve_model

    try:
        package = resolve_model(model)
    except ModelNotFoundError as exc:
        raise EdgeInputError(str(exc)) from None
    try:
        return EdgeEncoder(package, threads=threads)
    except (ModelNotFoundError, ValueError) as exc:
        raise EdgeInputError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a damaged package: ONNX Runtime, npz and zip errors alike
        first = " ".join(str(exc).split())[:300]
        raise EdgeInputError(f"model {package.name} ({package.path}) cannot be loaded: "
                             f"{exc.__class__.__name__}: {first}") from None


@dataclass
class EncodedImage:
    """One image through `encode_batches`: its stream (``result``), or why there is none (``error``)."""

    index: int  # position in the list given
    source_size: tuple[int, int] | None = None  # (H, W) of the file as read
    result: Any = None  # EncodeResult
    error: str | None = None  # the reader's message, or "encoding failed (...)"
    read_ms: float = 0.0  # reading and fitting, per image of its batch


def encode_batches(encoder, images: list[Path], batch_size: int = DEFAULT_BATCH) -> Iterator[EncodedImage]:
    """Read and encode images with one ONNX Runtime call per `batch_size` of them (the call costs more than
    an image at small sizes), yielding one `EncodedImage` per image in input order, batch by batch. The one
    batching path of ``encode`` and ``send``, so both write the same bytes for the same files."""
    import numpy as np
    from vitcodec.edge.preprocess import ImageReadError, load_image, to_pixels

    for start in range(0, len(images), max(1, batch_size)):
        items = [EncodedImage(i) for i in range(start, min(start + batch_size, len(images)))]
        ready: list[EncodedImage] = []
        pixels = []
        t0 = time.perf_counter()
        for item in items:
            try:
                image = load_image(images[item.index])
                item.source_size = (image.height, image.width)
                pixels.append(to_pixels(image, encoder.spec))
                ready.append(item)
            except ImageReadError as exc:
                item.error = str(exc)
        read_ms = (time.perf_counter() - t0) * 1e3 / max(len(items), 1)
        try:
            results = encoder.encode_pixels(np.stack(pixels)) if pixels else []
        except ValueError as exc:  # latents the codec cannot code (a broken model): report, do not crash
            for item in ready:
                item.error = f"encoding failed ({exc})"
            results = []
        for item, result in zip(ready, results):
            item.result, item.read_ms = result, read_ms
        yield from items


def encode_files(encoder, images: list[Path], outputs: list[Path], batch_size: int = DEFAULT_BATCH,
                 on_done: Callable[[EncodedFile], None] | None = None) -> list[EncodedFile]:
    """Encode every image and write its stream; unreadable images and failed writes become error rows."""
    from vitcodec.codec.bitstream import read_stream_info

    rows = [EncodedFile(source) for source in images]
    for item in encode_batches(encoder, images, batch_size):
        i, row = item.index, rows[item.index]
        row.source_size = item.source_size
        if item.error is not None:
            row.error = item.error if item.error.startswith(str(images[i])) else f"{images[i]}: {item.error}"
        else:
            result = item.result
            info = read_stream_info(result.stream)
            try:
                outputs[i].parent.mkdir(parents=True, exist_ok=True)
                outputs[i].write_bytes(result.stream)
            except OSError as exc:
                row.error = f"{outputs[i]}: cannot write ({exc.strerror or exc})"
            else:
                row.output, row.image_size, row.num_bytes = outputs[i], info.header.image_size, info.total_bytes
                row.header_bytes, row.z_bytes, row.y_bytes = info.header_bytes, info.z_bytes, info.y_bytes
                row.encode_ms = item.read_ms + sum(result.timings_ms.values())
        if on_done is not None:
            on_done(row)
    return rows


def inspect_stream(data: bytes, *, expected=None) -> dict[str, Any]:
    """Header fields and byte budget of a stream, and the installed model it belongs to (None if none).

    Raises `CodecError` subclasses for anything that is not an intact vitcodec stream, and
    `ModelMismatchError` when `expected` (a `ModelPackage`) is given and the stream is for another model.
    """
    from vitcodec.codec.bitstream import read_stream_info
    from vitcodec.codec.errors import ModelMismatchError
    from vitcodec.packages import ModelNotFoundError, find_by_model_id

    info = read_stream_info(data)
    header = info.header
    try:
        owner = find_by_model_id(header.model_id)
    except ModelNotFoundError:
        owner = None
    if expected is not None and header.model_id != expected.model_id:
        raise ModelMismatchError(expected.model_id, header.model_id)
    h, w = header.image_size
    return {
        "format_version": info.format_version,
        "model_id": header.model_id.hex(),
        "model": None if owner is None else {"name": owner.name, "version": owner.version, "path": str(owner.path)},
        "quality": header.quality,
        "image_size": [h, w],
        "latent_shape": list(header.latent_shape),
        "header_bytes": info.header_bytes,
        "z_bytes": info.z_bytes,
        "y_bytes": info.y_bytes,
        "total_bytes": info.total_bytes,
        "bpp": round(bits_per_pixel(info.total_bytes, (h, w)), 6),
    }
