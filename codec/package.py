"""Model packages (Triton-like ``repo/<name>/<version>/``) read without torch.

A package holds ``manifest.json`` (preset, labels, preprocessing, quality, model id), the edge's
``encoder.onnx``, ``codec.npz`` (CDF tables + integer h_s) and the cloud's ``weights.pt``. Edge and cloud
resolve a model the same way: an explicit path, a repository given by ``VITCODEC_MODEL_REPO``, or the zoo
shipped inside the distribution.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
PACKAGE_FORMAT = 1
DEFAULT_MODEL = "fmnist-q2"


class ModelNotFoundError(LookupError):
    """No package matches a model name, id or path; the message lists what is available."""


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


def zoo_root() -> Path:
    """The zoo shipped with the distribution (data files of ``vitcodec.models``, whose __init__ is torch-free)."""
    return Path(str(resources.files("vitcodec.models").joinpath("zoo")))


def repository_roots(extra: list[Path] | None = None) -> list[Path]:
    roots = list(extra or [])
    env = os.environ.get("VITCODEC_MODEL_REPO")
    if env:
        roots += [Path(p) for p in env.split(os.pathsep) if p]
    roots.append(zoo_root())
    return roots


def iter_packages(root: Path) -> list[ModelPackage]:
    """Every ``root/<name>/<version>/`` package, sorted by name then version."""
    found = []
    if not root.is_dir():
        return found
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for version_dir in sorted((p for p in name_dir.iterdir() if p.is_dir() and p.name.isdigit()),
                                  key=lambda p: int(p.name)):
            if (version_dir / MANIFEST).is_file():
                found.append(ModelPackage.open(version_dir))
    return found


def resolve_model(spec: str | os.PathLike[str] | None = None, *, version: int | None = None,
                  roots: list[Path] | None = None) -> ModelPackage:
    """A package from a path (package or ``<name>`` folder) or a name in the repositories (latest version)."""
    spec = DEFAULT_MODEL if spec is None else spec
    path = Path(spec)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return ModelPackage.open(path)
        versions = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit() and (p / MANIFEST).is_file()]
        if versions:
            chosen = [p for p in versions if version is None or int(p.name) == version]
            if chosen:
                return ModelPackage.open(max(chosen, key=lambda p: int(p.name)))
    name = str(spec)
    available: list[str] = []
    for root in repository_roots(roots):
        packages = [p for p in iter_packages(root) if p.name == name and (version is None or p.version == version)]
        if packages:
            return max(packages, key=lambda p: p.version)
        available += [p.name for p in iter_packages(root)]
    wanted = f"{name} version {version}" if version is not None else name
    listing = ", ".join(sorted(set(available))) or "none"
    raise ModelNotFoundError(f"unknown model {wanted!r}; available: {listing}")


def find_by_model_id(model_id: bytes, roots: list[Path] | None = None) -> ModelPackage:
    """The package whose id a stream carries (latest version wins if several share it)."""
    for root in repository_roots(roots):
        matches = [p for p in iter_packages(root) if p.compresses and p.model_id == model_id]
        if matches:
            return max(matches, key=lambda p: p.version)
    raise ModelNotFoundError(f"no installed model has id {model_id.hex()}; pass --model explicitly")
