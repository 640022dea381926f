"""One registry of presets and one factory (``create_model``), as timm does it."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from vitcodec.models.config import JCCConfig

if TYPE_CHECKING:
    from vitcodec.models.jcc import JointCompressionClassifier

FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

_PRESETS: dict[str, JCCConfig] = {}


def register_preset(config: JCCConfig) -> JCCConfig:
    if config.name in _PRESETS:
        raise ValueError(f"preset {config.name!r} is registered twice")
    _PRESETS[config.name] = config
    return config


register_preset(JCCConfig(
    name="jcc-deit-s-224",  # the paper: DeiT-S on a 16x-down conv encoder, M=192, N=128
    img_size=(224, 224), in_chans=3, encoder_channels=(128, 128, 128), M=192, N=128,
    embed_dim=384, depth=12, num_heads=6, num_classes=1000, drop_path_rate=0.1,
))
register_preset(JCCConfig(
    name="jcc-deit-ti-224",
    img_size=(224, 224), in_chans=3, encoder_channels=(128, 128, 128), M=192, N=128,
    embed_dim=192, depth=12, num_heads=3, num_classes=1000,
))
register_preset(JCCConfig(
    name="jcc-fmnist-32",  # the small preset: 28x28 grey padded to 32x32, 4x down -> 8x8 tokens
    img_size=(32, 32), in_chans=1, encoder_channels=(64,), M=128, N=64,
    embed_dim=128, depth=4, num_heads=4, num_classes=10,
    mean=(0.2860,), std=(0.3530,), labels=FASHION_MNIST_LABELS,
))
register_preset(JCCConfig(
    name="jcc-fmnist-28",  # Fashion-MNIST: 28x28 grey, 4x down -> 7x7 = 49 tokens
    img_size=(28, 28), in_chans=1, encoder_channels=(64,), M=128, N=64,
    embed_dim=128, depth=4, num_heads=4, num_classes=10,
    mean=(0.2860,), std=(0.3530,), labels=FASHION_MNIST_LABELS,
))
register_preset(JCCConfig(
    # The zoo's preset: one more conv (8x down, 28 padded to 32 -> 4x4 = 16 tokens). Measured on 2 CPU cores
    # it trains 2.3x faster per image than jcc-fmnist-28 and learns at least as fast per image, and 16 latent
    # positions instead of 49 leave the entropy coder less to spend bytes on.
    name="jcc-fmnist-28-s8",
    img_size=(28, 28), in_chans=1, encoder_channels=(32, 64), M=128, N=64,
    embed_dim=128, depth=4, num_heads=4, num_classes=10,
    mean=(0.2860,), std=(0.3530,), labels=FASHION_MNIST_LABELS,
))


def list_models(pattern: str | None = None) -> list[str]:
    """Preset names, sorted; ``pattern`` filters them with shell wildcards (``"jcc-fmnist-*"``), as in timm."""
    names = sorted(_PRESETS)
    return names if pattern is None else fnmatch.filter(names, pattern)


def get_preset(name: str) -> JCCConfig:
    try:
        return _PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(list_models())}") from None


def create_model(name: str | JCCConfig, **overrides: Any) -> JointCompressionClassifier:
    """Build a network from a preset name (or a config); overrides replace config fields, and those given as
    None are ignored (timm's habit, so CLI options left unset change nothing)."""
    from vitcodec.models.jcc import JointCompressionClassifier

    config = name if isinstance(name, JCCConfig) else get_preset(name)
    return JointCompressionClassifier(config.with_overrides(**overrides))
