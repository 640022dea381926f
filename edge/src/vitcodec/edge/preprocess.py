"""Image -> model input, in numpy, exactly as the model package's manifest describes: the one definition of
resize / pad / normalise.

Training (``vitcodec.models.data``), ``vitcodec eval`` and the edge encoder all call these functions, so a
network sees at training time exactly the tensor a device sends it (torch-free: the edge has no torch).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from vitcodec.file_errors import unreadable_reason
from vitcodec.packages import InputSpec


class ImageReadError(ValueError):
    """An input file is missing or is not a readable image."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file completely (first frame), turned upright by its EXIF orientation.

    Every failure is an `ImageReadError` with a one-line message that starts with the path: PIL's decoders
    raise a zoo of exception types for damaged files (OSError, SyntaxError, EOFError, struct.error, ...).
    PIL's warnings about damaged metadata are silenced; the image is either decoded or refused.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                try:
                    upright = ImageOps.exif_transpose(im)
                except Exception:  # damaged EXIF: keep the pixels as stored
                    upright = None
                return upright if upright is not None else im.copy()
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:  # the path, not the image
        raise ImageReadError(f"{path}: {unreadable_reason(exc)}") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path}: image too large ({_one_line(exc)})") from None
    except MemoryError:
        raise ImageReadError(f"{path}: image too large to decode in memory") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "not a readable image"
        raise ImageReadError(f"{path}: not a readable image ({_one_line(exc)})") from None


def fit_array(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, C) -> model size: centre zero-pad when smaller, else bilinear resize (PIL)."""
    h, w = pixels.shape[:2]
    th, tw = size
    if (h, w) == (th, tw):
        return pixels
    if h <= th and w <= tw:
        top, left = (th - h) // 2, (tw - w) // 2
        return np.pad(pixels, ((top, th - h - top), (left, tw - w - left), (0, 0)))
    mode = "L" if pixels.shape[2] == 1 else "RGB"
    im = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).resize((tw, th), Image.Resampling.BILINEAR)
    out = np.asarray(im)
    return out[..., None] if out.ndim == 2 else out


def _convert(image: Image.Image, mode: str) -> Image.Image:
    """Any PIL mode -> "L" or "RGB". 16-bit and float images are scaled to 8 bits (PIL's own conversion clips
    them, which turns a 16-bit scan white); alpha is dropped; modes PIL cannot convert directly go via RGB."""
    source = image.mode
    try:
        if source.startswith("I;16") or source in ("I", "F"):
            values = np.asarray(image, dtype=np.float64)
            if source.startswith("I;16") or (source == "I" and values.max(initial=0) > 255):
                values = values / 257.0
            elif source == "F" and values.max(initial=0) <= 1.0:
                values = values * 255.0
            image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
        if image.mode in ("PA", "RGBa"):
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "P"):  # alpha and palettes: expand, then drop alpha
            image = image.convert("RGBA").convert("RGB") if mode == "RGB" else image.convert("L")
        if image.mode == mode:
            return image
        try:
            return image.convert(mode)
        except ValueError:
            return image.convert("RGB").convert(mode)
    except ValueError as exc:
        raise ImageReadError(f"cannot convert a {source} image to {mode} ({exc})") from None


def to_pixels(image: Image.Image | np.ndarray, spec: InputSpec) -> np.ndarray:
    """Any PIL image or uint8 array -> uint8 (H, W, C) in the model's colour mode and size."""
    if isinstance(image, Image.Image):
        array = np.asarray(_convert(image, spec.pil_mode))
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise ImageReadError(f"image arrays must be uint8, got {array.dtype}")
        if array.ndim == 3 and array.shape[2] != spec.channels:
            if spec.channels == 1:
                array = array.mean(axis=2).round().astype(np.uint8)
            else:
                array = np.repeat(array[..., :1], 3, 2)
        elif array.ndim == 2 and spec.channels == 3:
            array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim == 2:
        array = array[..., None]
    return fit_array(array, spec.size)


def standardise(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 (B, H, W, C) -> float32 (B, C, H, W): ``(pixel / 255 - mean) / std`` (the training input)."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def pad_to_stride(x: np.ndarray, stride: int) -> np.ndarray:
    """Zero-pad float (B, C, H, W) bottom/right to a multiple of g_a's stride (what the network does itself)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)))
    return x


def normalise(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 (B, H, W, C) -> float32 (B, C, H', W') normalised and zero-padded to the stride (the encoder input)."""
    return pad_to_stride(standardise(pixels, spec), spec.stride)


def to_batch(images: list[Image.Image | np.ndarray] | np.ndarray, spec: InputSpec) -> np.ndarray:
    """Many images (any size, mode or channel count) -> uint8 (B, H, W, C) at the model size."""
    return np.stack([to_pixels(image, spec) for image in images])
