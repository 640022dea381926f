"""One model package on disk (Triton-like ``repo/<name>/<version>/``), read without torch.

A package holds ``manifest.json`` (preset, labels, preprocessing, quality, model id), the edge's
``encoder.onnx``, ``codec.npz`` (CDF tables + integer h_s) and the cloud's ``weights.pt`` and
``classifier.onnx``. The edge, the cloud and the exporter all read this one format, so it lives apart from any
of them, and `ModelPackage` is also its only writer (`ModelPackage.write`, `ModelPackage.rewrite`): the
torch side hands it file contents, never paths to write by hand. Finding a package by name, path or model id
is `vitcodec.packages.discovery`'s job. A package's files are in its folder, except for the bundled zoo's,
whose cloud files live in the cloud's distribution (`vitcodec.packages.bundled`): `file` looks there too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .bundled import companion_dirs

MANIFEST = "manifest.json"
PACKAGE_FORMAT = 1
EDGE_FILES = ("codec", "encoder")  # the ``files`` keys a device reads (with the manifest)
CLOUD_FILES = ("weights", "classifier")  # the keys only the server reads: an edge install needs none of them

# What a file holds: its bytes, or a function that writes it at the path given (``torch.save``, ``np.savez``).
FileContent = bytes | Callable[[Path], None]


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
    """A model package on disk; the manifest is parsed once. ``companions``: further folders holding some of
    its files (the bundled zoo's cloud files, `vitcodec.packages.bundled`), searched after ``path``."""

    path: Path
    manifest: dict[str, Any] = field(repr=False)
    companions: tuple[Path, ...] = field(default=(), repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ModelPackage:
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
        return cls(path, manifest, companion_dirs(path))

    @classmethod
    def write(cls, path: str | os.PathLike[str], manifest: Mapping[str, Any], contents: Mapping[str, FileContent],
              *, overwrite: bool = False) -> ModelPackage:
        """Write a new package folder: every file the manifest's ``files`` map names (key -> file name), from
        ``contents[key]``, then the manifest, which marks the package complete. Returns it opened.

        The manifest is checked the way `open` and the properties read it before anything is written, so a
        package this writes always opens. ``overwrite`` replaces an existing folder whole."""
        path = Path(path)
        _check_manifest(manifest)
        files = dict(manifest.get("files", {}))
        if set(files) != set(contents):
            raise ValueError(f"manifest files {sorted(files)} differ from the contents given {sorted(contents)}")
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} exists")
            shutil.rmtree(path)  # no file of an older package survives beside the new one
        path.mkdir(parents=True)
        for key, name in files.items():
            _write_file(path / name, contents[key])
        _write_file(path / MANIFEST, manifest_bytes(manifest))
        return cls.open(path)

    def rewrite(self, manifest: Mapping[str, Any] | None = None,
                files: Mapping[str, tuple[str, FileContent]] | None = None) -> ModelPackage:
        """Replace files (key -> (file name, content)) and/or the manifest of this package, and return it
        reopened. The ``files`` map keeps its order and gains the keys written; each file is replaced whole
        (written beside, then renamed) where `file` finds it (a new cloud file goes beside the package's other
        cloud files), the manifest last. The model id is the caller's: rewriting the classifier, the weights or
        the figures does not change it."""
        updated = dict(self.manifest if manifest is None else manifest)
        written = dict(files or {})
        updated["files"] = {**updated.get("files", {}), **{key: name for key, (name, _) in written.items()}}
        _check_manifest(updated)
        for key, (name, content) in written.items():
            _write_file(self._destination(key, name), content)
        _write_file(self.path / MANIFEST, manifest_bytes(updated))
        return type(self).open(self.path)

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
        """The path of the file the manifest names for ``key``: in the package's folder, else in a companion."""
        name = self.manifest.get("files", {}).get(key)
        if not name:
            raise ModelNotFoundError(f"model {self.name} has no {key} file")
        found = self._locate(name)
        if found is None:
            side = " (a cloud file: an edge install does not carry it)" if key in CLOUD_FILES else ""
            raise ModelNotFoundError(f"model {self.name}: {self.path / name} is missing{side}")
        return found

    def _locate(self, name: str) -> Path | None:
        return next((folder / name for folder in (self.path, *self.companions) if (folder / name).is_file()), None)

    def _destination(self, key: str, name: str) -> Path:
        """Where `rewrite` writes a file: over its current copy; a cloud file that has none beside the package's
        other cloud files (the classifier's graph points into ``weights.pt`` by a relative name)."""
        current = self._locate(name)
        if current is None and key in CLOUD_FILES:
            names = self.manifest.get("files", {})
            for other in (names[k] for k in CLOUD_FILES if k in names):
                current = current or self._locate(other)
        return (current.parent if current is not None else self.path) / name


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The one serialisation of a manifest (2-space JSON, key order kept, final newline): what every package
    written since format 1 holds, so re-writing a manifest changes no byte that did not change."""
    return (json.dumps(manifest, indent=2) + "\n").encode()


def _check_manifest(manifest: Mapping[str, Any]) -> None:
    """Refuse a manifest `ModelPackage` could not read back (before any file is written)."""
    if manifest.get("format") != PACKAGE_FORMAT:
        raise ValueError(f"package format must be {PACKAGE_FORMAT}, not {manifest.get('format')!r}")
    package = ModelPackage(Path("."), dict(manifest))
    try:
        _ = (package.name, package.version, package.model_id, package.input_spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"manifest cannot be read back: {type(exc).__name__}: {exc}") from None
    files = manifest.get("files", {})
    if not isinstance(files, Mapping) or not all(isinstance(n, str) and n != ".." and Path(n).name == n
                                                 for n in files.values()):
        raise ValueError(f"manifest files must map keys to plain file names, not {files!r}")
    if MANIFEST in files.values():
        raise ValueError(f"{MANIFEST} cannot be a package file")


def _write_file(path: Path, content: FileContent) -> None:
    """Write beside, then rename: a reader (a server reloading, a crash midway) never sees half a file. The
    file is first written under its own name in a hidden folder, since writers record it (``torch.save``
    names its zip entries after it; ``np.savez`` appends ``.npz`` to other names)."""
    staging = path.parent / ".writing"
    staging.mkdir(exist_ok=True)
    partial = staging / path.name
    try:
        if isinstance(content, bytes):
            partial.write_bytes(content)
        else:
            content(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # another writer may still be using it
            staging.rmdir()
