"""The cloud's share of the bundled zoo: ``zoo/<name>/<version>/`` beside this module holds the ``weights.pt``
and ``classifier.onnx`` of the packages whose manifest and edge files ship in ``vitcodec-packages``.

Registered in this distribution's metadata (entry-point group ``vitcodec.zoo``, cloud/pyproject.toml), which
is how `vitcodec.packages.bundled` finds these files without importing the server; a device installs no
vitcodec-cloud and so carries none of them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def zoo_root() -> Path:
    """The folder of the cloud files of the bundled zoo (package data of ``vitcodec.cloud``)."""
    return Path(str(resources.files("vitcodec.cloud").joinpath("zoo")))
