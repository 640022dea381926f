"""Where model packages are found: an explicit path, the repositories in ``VITCODEC_MODEL_REPO``, the zoo.

The edge, the cloud and the training CLI resolve a model the same way, so a name means the same package on
every side. Errors name what was looked for and what exists; flag advice is left to the CLIs.
"""

from __future__ import annotations

import os
from pathlib import Path

from .bundled import zoo_root
from .package import MANIFEST, ModelNotFoundError, ModelPackage

DEFAULT_MODEL = "fmnist-q2"
REPO_ENV = "VITCODEC_MODEL_REPO"


def repository_roots(extra: list[Path] | None = None) -> list[Path]:
    """Search order: the roots given, then ``VITCODEC_MODEL_REPO`` (``os.pathsep``-separated), then the zoo."""
    roots = list(extra or [])
    env = os.environ.get(REPO_ENV)
    if env:
        roots += [Path(p) for p in env.split(os.pathsep) if p]
    roots.append(zoo_root())
    return roots


def iter_packages(root: Path) -> list[ModelPackage]:
    """Every ``root/<name>/<version>/`` package, sorted by name then version."""
    found: list[ModelPackage] = []
    if not root.is_dir():
        return found
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for version_dir in sorted((p for p in name_dir.iterdir() if p.is_dir() and p.name.isdigit()),
                                  key=lambda p: int(p.name)):
            if (version_dir / MANIFEST).is_file():
                found.append(ModelPackage.open(version_dir))
    return found


def _open_path(path: Path, version: int | None) -> ModelPackage | None:
    """A package folder, or the chosen (default: latest) version inside a ``<name>`` folder; None otherwise."""
    if (path / MANIFEST).is_file():
        return ModelPackage.open(path)
    versions = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit() and (p / MANIFEST).is_file()]
    chosen = [p for p in versions if version is None or int(p.name) == version]
    return ModelPackage.open(max(chosen, key=lambda p: int(p.name))) if chosen else None


def resolve_model(spec: str | os.PathLike[str] | None = None, *, version: int | None = None,
                  roots: list[Path] | None = None) -> ModelPackage:
    """A package from a path (package or ``<name>`` folder) or a name in the repositories (latest version)."""
    spec = DEFAULT_MODEL if spec is None else spec
    path = Path(spec)
    if path.is_dir():
        package = _open_path(path, version)
        if package is not None:
            return package
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
    raise ModelNotFoundError(f"no installed model has id {model_id.hex()}")


def describe_mismatch(expected: ModelPackage, stream_model_id: bytes) -> str:
    """Why a stream does not fit `expected`, naming the installed model the stream is for when there is one."""
    try:
        owner = find_by_model_id(stream_model_id)
        belongs = f"model {stream_model_id.hex()} ({owner.name} version {owner.version})"
    except ModelNotFoundError:
        belongs = f"model {stream_model_id.hex()} (not installed)"
    return f"stream is for {belongs}, not for {expected.name} (model {expected.model_id.hex()})"
