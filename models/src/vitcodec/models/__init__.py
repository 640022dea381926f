"""vitcodec.models: torch networks, training, evaluation and export.

The package-level API follows timm: ``create_model(name, **overrides)`` builds a network from a preset and
``list_models(pattern)`` lists the presets. Importing this package loads no torch (the names resolve lazily on
first use), so tools that only list or describe models stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the checkers see; at run time the names resolve lazily below
    from vitcodec.models.config import JCCConfig
    from vitcodec.models.registry import create_model, get_preset, list_models

_LAZY = {
    "create_model": "vitcodec.models.registry",
    "list_models": "vitcodec.models.registry",
    "get_preset": "vitcodec.models.registry",
    "JCCConfig": "vitcodec.models.config",
}

__all__ = ["JCCConfig", "create_model", "get_preset", "list_models"]  # sorted(_LAZY), spelled out


def __getattr__(name: str) -> Any:
    """Resolve the public names on first access (PEP 562), keeping ``import vitcodec.models`` cheap."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
