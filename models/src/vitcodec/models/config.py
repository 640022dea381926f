"""Model configuration as data (timm-style): one frozen dataclass describes a whole network."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from vitcodec.models.latent_grid import latent_grid
from vitcodec.packages import InputSpec

TOKENIZERS = ("linear", "conv")
POOLS = ("cls", "seq")


@dataclass(frozen=True)
class JCCConfig:
    """Everything needed to build a joint compression–classification transformer.

    Names follow the paper: ``M`` channels in the latent ``y`` (the conv encoder's output, which replaces
    the ViT patch stem), ``N`` channels in the hyper-latent ``z``, ``embed_dim``/``depth``/``num_heads``
    for the transformer that classifies ``y_hat`` directly.
    """

    name: str
    img_size: tuple[int, int] = (224, 224)
    in_chans: int = 3
    encoder_channels: tuple[int, ...] = (128, 128, 128)  # hidden widths of g_a; the last layer outputs M
    M: int = 192
    N: int = 128
    kernel_size: int = 5
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    fusion_blocks: int = 3  # feature aggregation reads the outputs of this many early blocks
    decoder_channels: tuple[int, ...] | None = None  # None: mirror g_a
    num_classes: int = 1000
    drop_path_rate: float = 0.0
    tokenizer: str = "linear"  # how ŷ becomes tokens: "linear" (the paper: one M->D linear) | "conv" (3x3 conv block)
    pool: str = "cls"  # how tokens become one vector: "cls" (class token) | "seq" (attention-weighted mean, CCT)
    calibrated: bool = False  # the network carries a fitted temperature and novelty statistics (export sets it)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    labels: tuple[str, ...] = field(default_factory=tuple)

    @property
    def stride(self) -> int:
        """Total downsampling of g_a: every layer is a stride-2 conv."""
        return 2 ** (len(self.encoder_channels) + 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of y for an image of the given size (inputs are padded up to the stride)."""
        return latent_grid((height, width), self.stride)

    def input_spec(self) -> InputSpec:
        """The preprocessing this network expects, as a model package's manifest records it."""
        return InputSpec(size=(*self.img_size,), channels=self.in_chans, mean=tuple(self.mean),
                         std=tuple(self.std), stride=self.stride)

    @property
    def num_tokens(self) -> int:
        h, w = self.latent_shape(*self.img_size)
        return h * w

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JCCConfig:
        tuple_fields = {"img_size", "encoder_channels", "decoder_channels", "mean", "std", "labels"}
        clean: dict[str, Any] = {k: (tuple(v) if k in tuple_fields and v is not None else v) for k, v in data.items()}
        return cls(**clean)

    def with_overrides(self, **overrides: Any) -> JCCConfig:
        """timm's habit: unset (None) overrides are ignored."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})
