"""Checkpoints (weights + config, + optimiser and scheduler state while training) and package weights.

compressai's CDF buffers are sized by the hyperprior itself when a state dict is loaded, so a plain
``load_state_dict`` loads any of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from vitcodec.models.config import JCCConfig
from vitcodec.packages import ModelPackage

if TYPE_CHECKING:
    from vitcodec.models.jcc import JointCompressionClassifier


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


def load_package_network(package: ModelPackage, device: str | torch.device = "cpu") -> JointCompressionClassifier:
    """The whole torch network of a model package, in eval mode on ``device``, for the uncompressed reference
    (its package carries g_a, which runs in float). Compressing packages are loaded for decoding with
    `vitcodec.models.latent_networks.load_latent_networks`, which needs no compressai.

    The package holds only the modules its side needs (the cloud's ViT, aggregation and g_s; plus g_a for the
    uncompressed reference), stored in float16 or float32; they compute in float32.
    """
    from vitcodec.models.jcc import JointCompressionClassifier

    net = JointCompressionClassifier(JCCConfig.from_dict(package.manifest["config"]))
    state = torch.load(package.file("weights"), map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return net.to(device).eval()
