"""How one archived answer is packed into a row of the compact schema (cloud/archive_sql.py).

Why packed: at ~30 bytes a zoo stream is smaller than its answer written out as text (ids in hex, labels, JSON
probabilities), so the answer's layout decides the archive's size. An answer is stored as

- ``confidence``: the top-1 probability as the bits of a float32 (rounded down), an integer column. Non-negative
  floats order like their bits, so ``confidence <= bits(bound)`` filters exactly; 4 bytes where SQLite's REAL
  takes 8. The models' probabilities are float32, so nothing is lost; a float64 one reads back at most one
  float32 step lower (never above a bound it was under).
- ``answer``: a small blob: a flags byte (k, whether class indices need 16 bits, whether a novelty follows), the
  k class indices (8 or 16 bits), the other k-1 probabilities as float32, and the novelty as float32. Labels are
  not stored per row: they come from the model's label list (the ``models`` table).

The id is not stored either: it is the stream's hash (`archive.stream_id`), recomputed on read; the row keeps
its first 32 bits (``id_prefix``), indexed, to find it.
"""

from __future__ import annotations

import math
import struct

import numpy as np
from vitcodec.results import ClassScore

_F32 = struct.Struct("<f")
_I32 = struct.Struct("<i")
_WIDE = 0x10  # class indices take 16 bits
_NOVELTY = 0x20  # a float32 novelty ends the blob
_K_MASK = 0x0F


def confidence_bits(p: float) -> int:
    """A probability as the integer bits of the largest float32 not above it (monotone in `p` for p >= 0)."""
    value = np.float32(p)
    if float(value) > p:
        value = np.nextafter(value, np.float32(-math.inf))
    value = max(value, np.float32(0.0))
    return _I32.unpack(_F32.pack(float(value)))[0]


def bits_confidence(bits: int) -> float:
    return _F32.unpack(_I32.pack(bits))[0]


def id_prefix(image_id: bytes) -> int:
    """The indexed first 32 bits of a 16-byte id, as a signed integer (4 bytes in SQLite)."""
    return _I32.unpack(image_id[:4])[0]


def pack_answer(top: list[ClassScore], novelty: float | None) -> bytes:
    """The ``answer`` blob of a top-k (k <= 15; the top-1 probability goes to the ``confidence`` column)."""
    if not 1 <= len(top) <= _K_MASK:
        raise ValueError(f"an archived answer holds 1 to {_K_MASK} classes, got {len(top)}")
    wide = any(s.index > 0xFF for s in top)
    flags = len(top) | (_WIDE if wide else 0) | (0 if novelty is None else _NOVELTY)
    parts = [bytes([flags]), struct.pack(f"<{len(top)}{'H' if wide else 'B'}", *(s.index for s in top)),
             struct.pack(f"<{len(top) - 1}f", *(s.probability for s in top[1:]))]
    if novelty is not None:
        parts.append(_F32.pack(novelty))
    return b"".join(parts)


def unpack_answer(blob: bytes, confidence: int, labels: list[str]) -> tuple[list[ClassScore], float | None]:
    """(top-k with labels from the model's list, novelty) from an ``answer`` blob and its ``confidence``."""
    flags, k = blob[0], blob[0] & _K_MASK
    width = 2 if flags & _WIDE else 1
    indexes = struct.unpack_from(f"<{k}{'H' if width == 2 else 'B'}", blob, 1)
    at = 1 + k * width
    probs = (bits_confidence(confidence), *struct.unpack_from(f"<{k - 1}f", blob, at))
    novelty = _F32.unpack_from(blob, at + 4 * (k - 1))[0] if flags & _NOVELTY else None
    top = [ClassScore(i, labels[i] if i < len(labels) else "", p) for i, p in zip(indexes, probs)]
    return top, novelty
