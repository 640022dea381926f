"""Entropy-model tables as plain numpy data.

The torch side trains compressai's `EntropyBottleneck` (z) and `GaussianConditional` (y), calls `update()`,
and exports their integer CDF buffers into a `CodecTables`. From then on edge and cloud code only with these
integers, so both sides hold the same tables bit for bit, and the tables' hash goes into the model id.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, fields

import numpy as np

__all__ = ["CDF_PRECISION", "CodecTables", "hash_arrays"]

CDF_PRECISION = 16  # compressai's entropy_coder_precision: every CDF row ends at 2**16

# Name, dtype and rank of every array, in the fixed order the fingerprint hashes them.
_SPEC: tuple[tuple[str, str, int], ...] = (
    ("z_cdf", "<i4", 2),
    ("z_cdf_length", "<i4", 1),
    ("z_offset", "<i4", 1),
    ("z_medians", "<f4", 1),
    ("y_cdf", "<i4", 2),
    ("y_cdf_length", "<i4", 1),
    ("y_offset", "<i4", 1),
    ("scale_table", "<f8", 1),
)


def _check_cdf(name: str, cdf: np.ndarray, length: np.ndarray) -> None:
    """Each row must be a valid compressai quantised CDF: 0 first, 2**16 last, strictly rising in between."""
    if cdf.shape[0] != length.shape[0]:
        raise ValueError(f"{name}: {cdf.shape[0]} CDF rows but {length.shape[0]} lengths")
    if length.min(initial=3) < 3 or length.max(initial=0) > cdf.shape[1]:
        raise ValueError(f"{name}: lengths must lie in 3..{cdf.shape[1]} (one symbol plus the escape at least)")
    for i, n in enumerate(length.tolist()):
        row = cdf[i, :n]
        if row[0] != 0 or row[-1] != 1 << CDF_PRECISION or np.any(np.diff(row) <= 0):
            raise ValueError(f"{name}: row {i} is not a strictly increasing CDF from 0 to 2**{CDF_PRECISION}")


@dataclass(eq=False)
class CodecTables:
    """CDF tables for z (one row per channel) and y (one row per scale-table level).

    z_cdf (N, Lz) int32, z_cdf_length (N,), z_offset (N,): `EntropyBottleneck` buffers after `update()`;
    z_medians (N,) float32: `quantiles[:, 0, 1]`, subtracted before rounding z.
    y_cdf (S, Ly) int32, y_cdf_length (S,), y_offset (S,): `GaussianConditional` buffers after `update()`;
    scale_table (S,) float64: that module's `scale_table` buffer (float32 values, exactly widened), the
    thresholds that turn a scale into a row index.
    """

    z_cdf: np.ndarray
    z_cdf_length: np.ndarray
    z_offset: np.ndarray
    z_medians: np.ndarray
    y_cdf: np.ndarray
    y_cdf_length: np.ndarray
    y_offset: np.ndarray
    scale_table: np.ndarray

    def __post_init__(self) -> None:
        for name, dtype, ndim in _SPEC:
            value = np.ascontiguousarray(np.asarray(getattr(self, name)))
            if value.ndim != ndim:
                raise ValueError(f"{name} must have rank {ndim}, got shape {value.shape}")
            if np.dtype(dtype).kind == "i" and value.dtype.kind not in "iu":
                raise ValueError(f"{name} must hold integers, got dtype {value.dtype}")
            cast = value.astype(dtype)
            if value.dtype.kind in "iu" and not np.array_equal(cast, value):
                raise ValueError(f"{name} does not fit {np.dtype(dtype).name}")
            cast.setflags(write=False)  # shared by cached coder models: must not change under them
            setattr(self, name, cast)
        _check_cdf("z", self.z_cdf, self.z_cdf_length)
        _check_cdf("y", self.y_cdf, self.y_cdf_length)
        channels, levels = self.z_cdf.shape[0], self.y_cdf.shape[0]
        if self.z_offset.shape != (channels,) or self.z_medians.shape != (channels,):
            raise ValueError(f"z_offset and z_medians need shape ({channels},)")
        if self.y_offset.shape != (levels,) or self.scale_table.shape != (levels,):
            raise ValueError(f"y_offset and scale_table need shape ({levels},)")
        if not np.all(np.isfinite(self.z_medians)):
            raise ValueError("z_medians must be finite")
        if not (np.all(self.scale_table > 0) and np.all(np.diff(self.scale_table) > 0)):
            raise ValueError("scale_table must be positive and strictly increasing")

    @property
    def z_channels(self) -> int:
        return int(self.z_cdf.shape[0])

    @property
    def scale_levels(self) -> int:
        return int(self.y_cdf.shape[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> CodecTables:
        """Build from a mapping holding at least the table arrays (extra keys, e.g. h_s ones, are ignored)."""
        missing = [name for name, _, _ in _SPEC if name not in arrays]
        if missing:
            raise ValueError(f"codec tables lack {', '.join(missing)}")
        return cls(**{name: np.asarray(arrays[name]) for name, _, _ in _SPEC})

    def save(self, path: str | os.PathLike[str]) -> None:
        np.savez_compressed(path, **self.to_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CodecTables:
        with np.load(path, allow_pickle=False) as npz:
            return cls.from_arrays({key: npz[key] for key in npz.files})

    def fingerprint(self) -> bytes:
        """SHA-256 over every array (name, dtype, shape, little-endian bytes) in a fixed order."""
        return hash_arrays(self.to_arrays(), [name for name, _, _ in _SPEC])


def hash_arrays(arrays: dict[str, np.ndarray], order: list[str]) -> bytes:
    """Platform-independent SHA-256 of named arrays, shared by the tables and the integer h_s."""
    digest = hashlib.sha256()
    for name in order:
        value = np.ascontiguousarray(arrays[name])
        value = value.astype(value.dtype.newbyteorder("<"), copy=False)
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.digest()
