"""vitcodec.packages: the model-package format and where packages are found (torch-free).

A package is what ``vitcodec export`` writes and what the edge encoder and the cloud server load; the zoo
shipped with the distribution lives here as package data (``packages/zoo/<name>/<version>/``), all but its
cloud files, which the cloud's distribution ships and registers (`vitcodec.packages.bundled`).
"""

from .bundled import zoo_root
from .discovery import (
    DEFAULT_MODEL,
    describe_mismatch,
    find_by_model_id,
    iter_packages,
    repository_roots,
    resolve_model,
)
from .package import (
    CLOUD_FILES,
    EDGE_FILES,
    MANIFEST,
    PACKAGE_FORMAT,
    FileContent,
    InputSpec,
    ModelNotFoundError,
    ModelPackage,
)

__all__ = [
    "CLOUD_FILES",
    "DEFAULT_MODEL",
    "EDGE_FILES",
    "FileContent",
    "MANIFEST",
    "PACKAGE_FORMAT",
    "describe_mismatch",
    "InputSpec",
    "ModelNotFoundError",
    "ModelPackage",
    "find_by_model_id",
    "iter_packages",
    "repository_roots",
    "resolve_model",
    "zoo_root",
]
