"""What classifying or reconstructing one bitstream returns: one definition for the server and its clients.

The cloud's data plane builds these; the edge clients rebuild them from the HTTP or gRPC reply, so a result
means the same thing on both sides of the wire. Model ids are hex strings here, as they travel in JSON and
protobuf (the bitstream header holds the raw bytes). Plain dataclasses, no torch and no numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vitcodec.outputs import bits_per_pixel


@dataclass(frozen=True)
class ClassScore:
    """One class of a top-k list."""

    index: int
    label: str
    probability: float


@dataclass
class ClassifyResult:
    """The top-k classes of one stream, with its size and where the time went."""

    model: str
    version: str
    model_id: str  # hex, as in the stream header
    top: list[ClassScore]
    num_bytes: int
    header_bytes: int
    image_size: tuple[int, int]
    timings_ms: dict[str, float] = field(default_factory=dict)  # the server's stages (decode, queue, ...)
    latency_ms: float = 0.0  # measured by a client, network included; 0 on the server

    @property
    def label(self) -> str:
        return self.top[0].label

    @property
    def confidence(self) -> float:
        return self.top[0].probability

    @property
    def bpp(self) -> float:
        """Bits per pixel of the original image, header included."""
        return bits_per_pixel(self.num_bytes, self.image_size)

    def as_dict(self) -> dict[str, Any]:
        """The edge CLI's JSON row."""
        return {"label": self.label, "confidence": self.confidence, "model": self.model, "version": self.version,
                "model_id": self.model_id, "bytes": self.num_bytes, "header_bytes": self.header_bytes,
                "bpp": self.bpp, "image_size": list(self.image_size), "latency_ms": self.latency_ms,
                "top_k": [{"index": s.index, "label": s.label, "probability": s.probability} for s in self.top],
                "server_timings_ms": self.timings_ms}


@dataclass
class ReconstructResult:
    """The decoded image of one stream as PNG bytes (only made when a caller asks for pixels)."""

    model: str
    version: str
    png: bytes
    image_size: tuple[int, int]
    model_id: str = ""  # hex; the HTTP reply does not carry it
    num_bytes: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    latency_ms: float = 0.0
