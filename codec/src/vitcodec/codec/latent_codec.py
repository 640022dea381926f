"""The codec contract both sides use: latents in, payloads out, and back to the very same ŷ.

    encode:  z ─► z symbols = rint(z − medians) ─► z payload (CDF row = channel)
             ẑ (fixed point) ─► integer h_s ─► scale indexes, means
             y ─► y symbols = rint(y − means) ─► y payload (CDF row = scale index);  ŷ = y symbols + means
    decode:  z payload ─► z symbols ─► integer h_s ─► y payload ─► ŷ

Rounding is numpy's `rint` of a float64 difference (round half to even, like `torch.round`; compressai
subtracts in float32, so values within float32 rounding of a half may round the other way there, which only
matters when comparing with compressai, never for decoding). The decoder repeats every step after the
rounding in integers or exact float64, so its ŷ equals the encoder's bit for bit.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from .bitstream import MODEL_ID_BYTES
from .entropy_coder import DecodePlan, EntropyTable
from .hyper_synthesis import HyperSynthesis, hyper_from_arrays
from .scale_index import HyperOutput
from .tables import CodecTables

__all__ = ["EncodedLatents", "LatentCodec"]

_SYMBOL_LIMIT = 1 << 30  # |latent - mean| beyond this means a broken encoder, not an image


@dataclass(frozen=True)
class EncodedLatents:
    """Payloads for the bitstream, and the ŷ the decoder will reconstruct (float32, (M, h, w))."""

    z_payload: bytes
    y_payload: bytes
    y_hat: np.ndarray


def _symbols(values: np.ndarray, centres: np.ndarray, what: str) -> np.ndarray:
    diff = np.asarray(values, dtype=np.float64) - centres
    if not np.all(np.isfinite(diff)):
        raise ValueError(f"{what} holds non-finite values")
    sym = np.rint(diff)
    if sym.size and np.abs(sym).max() > _SYMBOL_LIMIT:
        raise ValueError(f"{what} is out of the codable range (|symbol| > 2**30)")
    return sym.astype(np.int32)


class LatentCodec:
    """Entropy coding of (y, z) with fixed CDF tables and an exact h_s (either format of `hyper_synthesis`);
    see the module docstring."""

    def __init__(self, tables: CodecTables, hyper: HyperSynthesis) -> None:
        if hyper.in_channels != tables.z_channels:
            raise ValueError(f"h_s takes {hyper.in_channels} z channels, tables have {tables.z_channels}")
        if hyper.scale_table.shape != tables.scale_table.shape or not np.array_equal(
            hyper.scale_table, tables.scale_table
        ):
            raise ValueError("h_s scale table differs from the y CDF tables' scale table")
        self.tables = tables
        self.hyper = hyper
        self._z_table = EntropyTable(tables.z_cdf, tables.z_cdf_length, tables.z_offset)
        self._y_table = EntropyTable(tables.y_cdf, tables.y_cdf_length, tables.y_offset)
        self._medians = tables.z_medians.astype(np.float64).reshape(-1, 1, 1)
        self._z_plans: dict[tuple[int, ...], DecodePlan] = {}

    @property
    def M(self) -> int:
        return self.hyper.M

    @property
    def N(self) -> int:
        return self.tables.z_channels

    def z_shape(self, latent_shape: tuple[int, int]) -> tuple[int, int]:
        """z's spatial size for a y of `latent_shape`: ceil(h / 4), ceil(w / 4) for the usual h_s."""
        up = self.hyper.upsampling
        return -(-latent_shape[0] // up), -(-latent_shape[1] // up)

    def _check_latent_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, int]:
        height, width = (int(v) for v in latent_shape)
        if height < 1 or width < 1:
            raise ValueError(f"latent shape must be positive, got {latent_shape}")
        full = self.hyper.output_size(self.z_shape((height, width)))
        if full[0] < height or full[1] < width:
            raise ValueError(f"h_s output {full} is smaller than the latent {height, width}")
        return height, width

    # --- coding ---------------------------------------------------------------------------------------

    def encode(self, y: np.ndarray, z: np.ndarray) -> EncodedLatents:
        """Code one image's latents y (M, h, w) and z (N, ceil(h/4), ceil(w/4)) (float32 from the encoder)."""
        y, z = np.asarray(y), np.asarray(z)
        if y.ndim != 3 or y.shape[0] != self.M:
            raise ValueError(f"y must be ({self.M}, h, w), got {y.shape}")
        latent_shape = self._check_latent_shape(y.shape[1:])
        if z.shape != (self.N, *self.z_shape(latent_shape)):
            raise ValueError(f"z must be {(self.N, *self.z_shape(latent_shape))} for y {y.shape}, got {z.shape}")
        z_sym = _symbols(z, self._medians, "z")
        z_payload = self._z_table.encode(z_sym, self._channel_indexes(z_sym.shape))
        params = self.hyper.forward(self.hyper.fixed_input(z_sym[None], self.tables.z_medians), latent_shape)
        means = params.means[0]
        y_sym = _symbols(y, means, "y")
        y_payload = self._y_table.encode(y_sym, params.scale_indexes[0])
        return EncodedLatents(z_payload, y_payload, (y_sym + means).astype(np.float32))

    def decode(self, z_payload: bytes, y_payload: bytes, latent_shape: tuple[int, int], *,
               checksum_verified: bool = False) -> np.ndarray:
        """ŷ (M, h, w) float32 from the payloads; bad payloads raise `CorruptPayloadError`."""
        return self.decode_batch([(z_payload, y_payload)], latent_shape, checksum_verified=checksum_verified)[0]

    def decode_batch(self, payloads: list[tuple[bytes, bytes]], latent_shape: tuple[int, int], *,
                     checksum_verified: bool = False) -> np.ndarray:
        """ŷ (B, M, h, w) for several streams of one latent shape, running h_s once for the whole batch.

        The first corrupt stream raises; callers that must isolate failures decode one stream at a time.
        ``checksum_verified``: the payloads come out of streams whose CRC `unpack_stream` checked, so the range
        coder's leftover check (a re-encode per payload, `EntropyTable.decode`) is skipped.
        """
        latent_shape = self._check_latent_shape(latent_shape)
        z_sym = self.decode_z(payloads, latent_shape, checksum_verified=checksum_verified)
        params = self.hyper.forward(self.hyper.fixed_input(z_sym, self.tables.z_medians), latent_shape)
        return self.decode_y(payloads, params, latent_shape, checksum_verified=checksum_verified)

    def decode_z(self, payloads: list[tuple[bytes, bytes]], latent_shape: tuple[int, int], *,
                 checksum_verified: bool = False) -> np.ndarray:
        """z symbols (B, N, hz, wz) int32 of a batch (step one of `decode_batch`)."""
        z_shape = (self.N, *self.z_shape(latent_shape))
        plan = self._z_plans.get(z_shape)
        if plan is None:  # z's coding order depends on its shape only: sort once per shape
            plan = self._z_plans.setdefault(z_shape, self._z_table.plan(self._channel_indexes(z_shape)))
        z_sym = np.empty((len(payloads), *z_shape), dtype=np.int32)
        for b, (z_payload, _) in enumerate(payloads):
            z_sym[b] = self._z_table.decode_planned(z_payload, plan, check_leftover=not checksum_verified)
        return z_sym

    def decode_y(self, payloads: list[tuple[bytes, bytes]], params: HyperOutput,
                 latent_shape: tuple[int, int], *, checksum_verified: bool = False) -> np.ndarray:
        """ŷ (B, M, h, w) float32 from the y payloads and h_s's output for the batch (step three)."""
        means = params.means
        y_hat = np.empty((len(payloads), self.M, *latent_shape), dtype=np.float32)
        for b, (_, y_payload) in enumerate(payloads):
            y_sym = self._y_table.decode(y_payload, params.scale_indexes[b], check_leftover=not checksum_verified)
            np.add(y_sym, means[b], out=y_hat[b], casting="unsafe")
        return y_hat

    @staticmethod
    def _channel_indexes(shape: tuple[int, ...]) -> np.ndarray:
        """z uses one CDF row per channel."""
        return np.broadcast_to(np.arange(shape[0], dtype=np.int32).reshape(-1, 1, 1), shape)

    # --- identity and persistence ---------------------------------------------------------------------

    def fingerprint(self) -> bytes:
        """SHA-256 over the CDF tables and the integer h_s: everything that decides how bytes decode."""
        return hashlib.sha256(self.tables.fingerprint() + self.hyper.fingerprint()).digest()

    def model_id(self, encoder_digest: bytes = b"") -> bytes:
        """The 4-byte id written in every stream: hash of this codec plus `encoder_digest` (e.g. the SHA-256
        of the encoder's ONNX bytes), so a stream from another encoder or table set is refused, not misread."""
        return hashlib.sha256(self.fingerprint() + bytes(encoder_digest)).digest()[:MODEL_ID_BYTES]

    def save(self, path: str | os.PathLike[str]) -> None:
        """One compressed .npz holding tables and h_s (no pickle); `CodecTables.load` also reads it."""
        np.savez_compressed(path, **self.tables.to_arrays(), **self.hyper.to_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatentCodec:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        return cls(CodecTables.from_arrays(arrays), hyper_from_arrays(arrays))
