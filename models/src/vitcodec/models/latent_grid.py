"""The latent grid a stream must declare: one rule for the server's routing (`cloud/dataplane.py`, before any
decoding allocates) and for a model's own decode (`CloudModel.decode`: `vitcodec-cloud decode`, eval).

g_a halves the image `log2(stride)` times and the edge pads the image up to a multiple of the stride, so an
H×W image has a ceil(H/stride)×ceil(W/stride) grid of latents. The bitstream header carries both sizes; a
header whose grid does not follow from its image size is refused as an unusable stream. torch-free.
"""

from __future__ import annotations

import math

from vitcodec.codec.errors import CodecError


def latent_grid(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """The (h, w) grid of y for an image of `image_size` (H, W) under a total downsampling of `stride`."""
    height, width = image_size
    return math.ceil(height / stride), math.ceil(width / stride)


def check_latent_grid(image_size: tuple[int, int], latent_shape: tuple[int, int], stride: int,
                      model_name: str) -> None:
    """`CodecError` unless `latent_shape` is the grid `image_size` gives (the stream's header is inconsistent)."""
    expected = latent_grid(image_size, stride)
    if tuple(latent_shape) != expected:
        (h, w), (lh, lw) = image_size, latent_shape
        raise CodecError(f"stream's latent shape {lh}x{lw} does not fit its {h}x{w} image for model "
                         f"{model_name!r} (expected {expected[0]}x{expected[1]})")
