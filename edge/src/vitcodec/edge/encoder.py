"""The edge encoder: ONNX Runtime runs g_a + h_a, ``codec/`` rounds, runs the integer h_s and range-codes.

No torch anywhere: this is what a camera or gateway installs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image
from vitcodec.codec.bitstream import StreamHeader, pack_stream
from vitcodec.codec.latent_codec import LatentCodec
from vitcodec.edge.preprocess import load_image, normalise, to_pixels
from vitcodec.ort_session import create_session
from vitcodec.outputs import bits_per_pixel
from vitcodec.packages import ModelPackage


@dataclass
class EncodeResult:
    stream: bytes
    image_size: tuple[int, int]
    y_hat: np.ndarray  # what the cloud must decode to, bit for bit (used by eval's decode_failures)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def num_bytes(self) -> int:
        return len(self.stream)

    @property
    def bpp(self) -> float:
        return bits_per_pixel(len(self.stream), self.image_size)


class EdgeEncoder:
    """Image(s) -> bitstream(s) for one model package."""

    def __init__(self, package: ModelPackage, threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        if not package.compresses:
            raise ValueError(f"model {package.name} is the uncompressed reference and has no edge encoder")
        self.package = package
        self.spec = package.input_spec
        self.codec = LatentCodec.load(package.file("codec"))
        self.session = create_session(package.file("encoder"), threads, providers=providers)
        self.model_id = package.model_id
        self.quality = package.quality or 0

    def encode_pixels(self, pixels: np.ndarray) -> list[EncodeResult]:
        """A batch of uint8 (B, H, W, C) images already at the model size -> one stream each."""
        t0 = time.perf_counter()
        x = normalise(pixels, self.spec)
        # the encoder's outputs are dense float tensors (ORT's annotation also allows sparse tensors, lists, maps)
        y, z = cast("Sequence[np.ndarray]", self.session.run(["y", "z"], {"image": x}))
        t1 = time.perf_counter()
        size = (int(pixels.shape[1]), int(pixels.shape[2]))
        results = []
        for yi, zi in zip(y, z):
            t2 = time.perf_counter()
            encoded = self.codec.encode(yi, zi)
            header = StreamHeader(self.model_id, self.quality, size, tuple(yi.shape[-2:]))
            stream = pack_stream(header, encoded.z_payload, encoded.y_payload)
            t3 = time.perf_counter()
            results.append(EncodeResult(stream, size, encoded.y_hat,
                                        {"encoder": (t1 - t0) * 1e3 / len(y), "codec": (t3 - t2) * 1e3}))
        return results

    def encode_image(self, image: Image.Image | np.ndarray | str | Path) -> EncodeResult:
        if isinstance(image, (str, Path)):
            image = load_image(image)
        return self.encode_pixels(to_pixels(image, self.spec)[None])[0]
