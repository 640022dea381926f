"""The data plane's own request and response types: what REST and gRPC convert to and from, once each.

The native results (`ClassifyResult`, `ReconstructResult`) live in `vitcodec.results`, shared with the clients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# v2 tensor names of every vitcodec model
INPUT_NAME = "BITSTREAM"
PROBS_NAME = "PROBABILITIES"
LABEL_NAME = "LABEL"
NOVELTY_NAME = "novelty"  # calibrated models only: FP32 [B], above 1.0 = out of distribution
ARCHIVE_ID_NAME = "archive_id"  # servers with an archive only: BYTES [B], each stream's archive id


@dataclass
class InferInput:
    name: str
    datatype: str
    shape: list[int]
    data: list[bytes] | np.ndarray  # BYTES -> list of bytes; numeric -> flat array
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def class_count(self) -> int:
        """The classification extension: > 0 asks for the top-k as "score:index:label" strings."""
        value = self.parameters.get("classification", 0)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else -1


@dataclass
class InferRequest:
    model_name: str
    model_version: str = ""
    inputs: list[InferInput] = field(default_factory=list)
    outputs: list[RequestedOutput] | None = None  # None: every output
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferOutput:
    name: str
    datatype: str
    shape: list[int]
    data: list[bytes] | np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[InferOutput]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelSummary:
    name: str
    version: str
    model_id: str
    state: str
    reason: str
    quality: int | None
    labels: list[str]
    input_size: tuple[int, int]
    channels: int
    default: bool
