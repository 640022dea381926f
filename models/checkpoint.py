"""Checkpoints: weights + config (+ optimiser state while training), and loading by path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vitcodec.models.config import JCCConfig


def save_checkpoint(path: Path, model: torch.nn.Module, config: JCCConfig, **extra: Any) -> None:
    """Atomic write (tmp + rename) so an interrupted run never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"config": config.to_dict(), "model": model.state_dict(), **extra}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location=map_location, weights_only=False)


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load weights, resizing compressai's CDF buffers first (their size depends on the tables)."""
    hp = getattr(model, "hyperprior", None)
    if hp is not None:
        for module_name in ("entropy_bottleneck", "gaussian_conditional"):
            module = getattr(hp, module_name)
            prefix = f"hyperprior.{module_name}."
            for buf in ("_quantized_cdf", "_offset", "_cdf_length"):
                key = prefix + buf
                if key in state and getattr(module, buf).shape != state[key].shape:
                    getattr(module, buf).resize_(state[key].shape)
            key = prefix + "scale_table"
            if key in state and getattr(module, "scale_table", None) is not None:
                if module.scale_table.shape != state[key].shape:
                    module.scale_table.resize_(state[key].shape)
    model.load_state_dict(state, strict=strict)
