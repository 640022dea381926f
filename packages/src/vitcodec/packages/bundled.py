"""The zoo bundled with the distributions, split by side: what the edge needs here, the cloud's files elsewhere.

``vitcodec-packages`` (installed on devices and servers alike) ships each bundled package's manifest and its
edge files (`EDGE_FILES`: ``encoder.onnx``, ``codec.npz``) in ``vitcodec/packages/zoo/<name>/<version>/``. The
cloud-only files (`CLOUD_FILES`: ``weights.pt``, ``classifier.onnx``, ~9 MB the torch-free edge cannot load)
ship in the distribution that runs them, which registers its folder of the same ``<name>/<version>/`` layout
under the entry-point group ``vitcodec.zoo`` (an entry point naming a function that returns the folder).
This distribution never imports the cloud: it finds those folders through the installed metadata, so a
device, which installs no cloud, simply has none. Packages written elsewhere (``vitcodec export --out``) keep
all their files in their one folder and have no companion folders.
"""

from __future__ import annotations

import functools
from importlib import metadata, resources
from pathlib import Path

ENTRY_POINT_GROUP = "vitcodec.zoo"


def zoo_root() -> Path:
    """The zoo shipped with the distribution: package data of ``vitcodec.packages`` (torch-free)."""
    return Path(str(resources.files("vitcodec.packages").joinpath("zoo")))


@functools.cache
def companion_roots() -> tuple[Path, ...]:
    """The folders other installed distributions register for the bundled zoo's files (entry-point group
    ``vitcodec.zoo``), in the order of their names. Read once per process: installing a distribution takes a
    restart anyway."""
    roots = []
    for entry in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            roots.append(Path(entry.load()()))
        except Exception as exc:  # noqa: BLE001 - a broken registration names itself, whatever it raised
            raise RuntimeError(f"the {ENTRY_POINT_GROUP} entry point {entry.name} = {entry.value} cannot be "
                               f"used: {type(exc).__name__}: {exc}") from exc
    return tuple(roots)


def companion_dirs(package_dir: Path) -> tuple[Path, ...]:
    """For a package of the bundled zoo (``zoo_root()/<name>/<version>``), the existing folders of the same
    name and version in the registered roots; for any other folder, none."""
    package_dir = Path(package_dir)
    if package_dir.resolve().parent.parent != zoo_root().resolve():
        return ()
    relative = Path(package_dir.parent.name, package_dir.name)
    return tuple(root / relative for root in companion_roots() if (root / relative).is_dir())
