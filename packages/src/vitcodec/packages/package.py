"""One model package on disk (Triton-like ``repo/<name>/<version>/``), read without torch.

A package holds ``manifest.json`` (preset, labels, preprocessing, quality, model id), the edge's
``encoder.onnx``, ``codec.npz`` (CDF tables + integer h_s) and the cloud's ``weights.pt``. The edge, the cloud
and the exporter all read and write this one format, so it lives apart from any of them; finding a package by
name, path or model id is `vitcodec.packages.discovery`'s job.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
PACKAGE_FORMAT = 1


class ModelNotFoundError(LookupError):
    """No usable package at a path, or none matches a model name or id; the message says which and why.

    The message names no command-line flag: each CLI adds its own advice.
    """


@dataclass(frozen=True)
class InputSpec:
    """How the edge turns an image into the encoder's input tensor."""

    size: tuple[int, int]  # (H, W) the model was trained at
    channels: int  # 1 = grey ("L"), 3 = RGB
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stride: int  # g_a's total downsampling: inputs are zero-padded (after normalising) to a multiple

    @property
    def pil_mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"


@dataclass(frozen=True)
class ModelPackage:
    """A model package on disk; the manifest is parsed once."""

    path: Path
    manifest: dict[str, Any] = field(repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "ModelPackage":
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise ModelNotFoundError(f"{path} is not a model package (no {MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"{manifest_path} is unreadable: {exc}") from None
        if manifest.get("format") != PACKAGE_FORMAT:
            raise ModelNotFoundError(f"{manifest_path}: unsupported package format {manifest.get('format')!r}")
        return cls(path, manifest)

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> int:
        return int(self.manifest.get("version", 1))

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.get("labels", []))

    @property
    def quality(self) -> int | None:
        return self.manifest.get("quality")

    @property
    def compresses(self) -> bool:
        """False for the step-one reference model, which has no entropy model and makes no bitstreams."""
        return bool(self.manifest.get("compress", False))

    @property
    def model_id(self) -> bytes:
        return bytes.fromhex(self.manifest.get("model_id", ""))

    @cached_property
    def input_spec(self) -> InputSpec:
        spec = self.manifest["input"]
        return InputSpec(tuple(spec["size"]), int(spec["channels"]), tuple(spec["mean"]), tuple(spec["std"]),
                         int(spec["stride"]))

    def file(self, key: str) -> Path:
        name = self.manifest.get("files", {}).get(key)
        if not name:
            raise ModelNotFoundError(f"model {self.name} has no {key} file")
        path = self.path / name
        if not path.is_file():
            raise ModelNotFoundError(f"model {self.name}: {path} is missing")
        return path
