"""What `LatentCodec` needs of an h_s, and which h_s a saved codec holds (its ``hs_format``).

Two formats decode today: 1, the wide fixed-point h_s computed exactly with int8 digit planes
(`integer_hyper_synthesis`, every package exported before the 8-bit h_s), and 2, the 8-bit h_s whose exact
arithmetic is int8 inference (`int8_hyper_synthesis`, what `vitcodec export` writes now). The format is part of
the h_s arrays, so of the model id: a stream names the h_s it was coded with.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from . import int8_hyper_synthesis, integer_hyper_synthesis
from .scale_index import HyperOutput

__all__ = ["FORMATS", "HyperSynthesis", "hyper_format", "hyper_from_arrays"]

FORMATS = {1: integer_hyper_synthesis.IntegerHyperSynthesis, 2: int8_hyper_synthesis.Int8HyperSynthesis}


class HyperSynthesis(Protocol):
    """An exact h_s: z symbols in, entropy parameters of y out, the same integers on every machine."""

    in_channels: int
    M: int
    upsampling: int
    scale_table: np.ndarray
    scale_bound: float

    def fixed_input(self, z_symbols: np.ndarray, medians: np.ndarray) -> np.ndarray:
        """The h_s input of a batch of z symbols (B, N, h, w)."""
        ...

    def forward(self, fixed: np.ndarray, /, out_hw: tuple[int, int] | None = None) -> HyperOutput:
        """Scale indexes and fixed-point means, cropped top-left to out_hw."""
        ...

    def forward_float(self, fixed: np.ndarray, /,
                      out_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Dequantised (scales, means)."""
        ...

    def output_size(self, z_hw: tuple[int, int]) -> tuple[int, int]:
        """Spatial size of the output for a z of size z_hw."""
        ...

    def to_arrays(self) -> dict[str, np.ndarray]:
        """hs_-prefixed arrays that `hyper_from_arrays` reads back."""
        ...

    def fingerprint(self) -> bytes:
        """SHA-256 of the arrays: part of the model id."""
        ...


def hyper_format(arrays: dict[str, np.ndarray]) -> int:
    """The h_s format number of saved arrays (ValueError when they hold no h_s)."""
    if "hs_format" not in arrays:
        raise ValueError("arrays hold no integer h_s (no hs_format)")
    return int(np.asarray(arrays["hs_format"]).ravel()[0])


def hyper_from_arrays(arrays: dict[str, np.ndarray]) -> HyperSynthesis:
    """The h_s of saved arrays, in the format they name."""
    fmt = hyper_format(arrays)
    if fmt not in FORMATS:
        raise ValueError(f"h_s format {fmt} is unknown to this build (it reads {', '.join(map(str, FORMATS))})")
    return FORMATS[fmt].from_arrays(arrays)
