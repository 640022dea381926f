"""The model repository: name -> versions -> loaded model, with readiness, as Triton and KServe keep it.

Packages are discovered from manifests at construction (cheap, no torch work), so metadata is served at once;
weights load later, off the request path (`load_all`, run by the server in a worker thread). A model is
ready when its weights are loaded; the server is ready when every discovered model is.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from vitcodec.packages import ModelNotFoundError, ModelPackage, iter_packages, zoo_root

from .backends import Loader, make_loader
from .errors import ModelNotReady
from .served_model import ServedModel

log = logging.getLogger("vitcodec.cloud.repository")


class ModelState(str, Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ModelEntry:
    """One version of one model."""

    package: ModelPackage
    state: ModelState = ModelState.LOADING
    reason: str = ""
    model: ServedModel | None = None  # once loaded
    load_seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.package.name

    @property
    def version(self) -> str:
        return str(self.package.version)

    @property
    def model_id(self) -> bytes:
        return self.package.model_id

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    @property
    def labels(self) -> list[str]:
        if self.package.labels:
            return self.package.labels
        classes = int(self.package.manifest.get("config", {}).get("num_classes", 0))
        return [str(i) for i in range(classes)]

    @property
    def calibrated(self) -> bool:
        """Does the model give a novelty score with its probabilities (manifest ``config.calibrated``)?"""
        return bool(self.package.manifest.get("config", {}).get("calibrated", False))


class ModelRepository:
    """Serves every compressing package under the given roots (optionally only some names)."""

    def __init__(self, roots: list[Path] | None = None, names: list[str] | None = None,
                 loader: Loader | None = None, device: str = "cpu") -> None:
        """`loader`: package -> served model (default: `backends.make_loader` with the torch backend)."""
        self.roots = [Path(r) for r in roots] if roots else [zoo_root()]
        self.device = device
        self._loader = loader or make_loader("torch", device)
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, ModelEntry]] = {}
        self._by_id: dict[bytes, ModelEntry] = {}
        self._discover(set(names or ()))

    # -- discovery -----------------------------------------------------------------------------------
    def _discover(self, wanted: set[str]) -> None:
        for root in self.roots:
            if not root.is_dir():
                log.warning("model repository %s does not exist", root)
                continue
            for package in iter_packages(root):
                if wanted and package.name not in wanted:
                    continue
                if not package.compresses:
                    log.info("skipping %s: an uncompressed reference model decodes no bitstreams", package.name)
                    continue
                versions = self._entries.setdefault(package.name, {})
                version = str(package.version)
                if version in versions:
                    log.warning("%s version %s found again in %s; keeping %s", package.name, version, root,
                                versions[version].package.path)
                    continue
                versions[version] = ModelEntry(package)
        for name in sorted(wanted - set(self._entries)):
            log.warning("model %s was asked for but is in none of %s", name, [str(r) for r in self.roots])
        for entry in self.entries():  # latest version wins when two versions share an id
            self._by_id[entry.model_id] = entry

    # -- loading -------------------------------------------------------------------------------------
    def load_all(self) -> None:
        """Load every model that is not loaded yet (blocking; run it off the event loop)."""
        for entry in self.entries():
            if entry.state is not ModelState.READY:
                self.load(entry)

    def load(self, entry: ModelEntry) -> None:
        t0 = time.perf_counter()
        try:
            model = self._loader(entry.package)
        except Exception as exc:  # a broken package must not take the others down
            log.exception("loading %s version %s failed", entry.name, entry.version)
            with self._lock:
                entry.state, entry.reason = ModelState.UNAVAILABLE, f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            entry.model, entry.state, entry.reason = model, ModelState.READY, ""
            entry.load_seconds = time.perf_counter() - t0
        log.info("loaded %s version %s (id %s) in %.2f s", entry.name, entry.version, entry.model_id.hex(),
                 entry.load_seconds)

    # -- lookup --------------------------------------------------------------------------------------
    def entries(self) -> list[ModelEntry]:
        return [entry for name in sorted(self._entries)
                for _, entry in sorted(self._entries[name].items(), key=lambda kv: int(kv[0]))]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def versions(self, name: str) -> list[str]:
        return sorted(self._entries.get(name, {}), key=int)

    @property
    def ready(self) -> bool:
        entries = self.entries()
        return bool(entries) and all(e.ready for e in entries)

    def get(self, name: str, version: str | int | None = None) -> ModelEntry:
        """The entry for a name and version (None or "": the latest); raises ModelNotFoundError."""
        versions = self._entries.get(name)
        if not versions:
            served = ", ".join(self.names()) or "none"
            raise ModelNotFoundError(f"unknown model {name!r}; served models: {served}")
        if version in (None, ""):
            return versions[max(versions, key=int)]
        entry = versions.get(str(version))
        if entry is None:
            versions_text = ", ".join(self.versions(name))
            raise ModelNotFoundError(f"model {name!r} has no version {version!r}; versions: {versions_text}")
        return entry

    def by_model_id(self, model_id: bytes) -> ModelEntry:
        """The entry whose package made streams with this id; raises ModelNotFoundError listing the served ids."""
        entry = self._by_id.get(bytes(model_id))
        if entry is None:
            served = ", ".join(f"{e.name} v{e.version} = {e.model_id.hex()}" for e in self.entries()) or "none"
            raise ModelNotFoundError(f"no served model has model id {bytes(model_id).hex()} (served: {served})")
        return entry

    @staticmethod
    def require_ready(entry: ModelEntry) -> ModelEntry:
        if entry.state is ModelState.READY:
            return entry
        if entry.state is ModelState.LOADING:
            raise ModelNotReady(f"model {entry.name!r} version {entry.version} is still loading; retry shortly")
        raise ModelNotReady(f"model {entry.name!r} version {entry.version} is unavailable: {entry.reason}")
