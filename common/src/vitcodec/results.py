"""What classifying or reconstructing one bitstream returns: one definition for the server and its clients.

The cloud's data plane builds these; the edge clients rebuild them from the HTTP or gRPC reply, so a result
means the same thing on both sides of the wire. Model ids are hex strings here, as they travel in JSON and
protobuf (the bitstream header holds the raw bytes). Plain dataclasses, no torch and no numpy.

A calibrated model also says how unlike its training data an image is: ``novelty``, the squared Mahalanobis
distance of the image's pooled features to the nearest class mean over a threshold chosen on validation data
(about 4 % of in-distribution images exceed it). Above 1.0 the image is out of distribution. Uncalibrated
models have no novelty (None), and neither do the answers of servers that predate it.

A server that keeps an archive (``vitcodec-cloud serve --archive PATH``) stores every classified stream and
returns its ``archive_id`` (a hash of the stream's bytes), with which the stream's entry and reconstruction
can be fetched later; None from a server without an archive. ``client`` is who the server took the caller for
(the device name of its token, else its mTLS certificate's identity); None when it did not know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vitcodec.outputs import bits_per_pixel

OOD_THRESHOLD = 1.0  # novelty above this: out of distribution (the novelty is already divided by its threshold)


@dataclass(frozen=True)
class ClassScore:
    """One class of a top-k list."""

    index: int
    label: str
    probability: float


class RankedAnswer:
    """An answer whose first class is its label: one definition of label and confidence for every answer type
    (the clients' results here, the server's archive entries)."""

    top: list[ClassScore]

    @property
    def label(self) -> str:
        return self.top[0].label

    @property
    def confidence(self) -> float:
        return self.top[0].probability


@dataclass
class ClassifyResult(RankedAnswer):
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
    novelty: float | None = None  # calibrated models only: > 1.0 means out of distribution
    archive_id: str | None = None  # the stream's id in the server's archive; None when the server keeps none
    client: str | None = None  # who the server took the caller for (device name, else mTLS identity); None: unknown

    @property
    def out_of_distribution(self) -> bool | None:
        """Is the image unlike the model's training data (novelty above 1.0)? None when the model gave no
        novelty (uncalibrated)."""
        return None if self.novelty is None else self.novelty > OOD_THRESHOLD

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
                "server_timings_ms": self.timings_ms, "novelty": self.novelty,
                "out_of_distribution": self.out_of_distribution, "archive_id": self.archive_id,
                "client": self.client}


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
