"""The networks that work on decoded latents ŷ: the ViT classifier, feature aggregation and g_s.

They are all the cloud needs, and they need no entropy model: this module imports neither compressai nor
any module that does, so a server installs and runs without the training stack (``vitcodec-cloud``).
`JointCompressionClassifier` (models/jcc.py) extends this class with g_a and the hyperprior, so the
state-dict keys (``vit.*``, ``aggregation.*``, ``g_s.*``) are the same in both and a package's
``weights.pt`` loads into either.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from vitcodec.models.config import JCCConfig
from vitcodec.models.decoder import FeatureAggregation, SynthesisTransform
from vitcodec.models.novelty import Calibration
from vitcodec.models.vit import LatentViT
from vitcodec.packages import ModelPackage


class LatentNetworks(nn.Module):
    """Classify from ŷ (no pixel decoder) and reconstruct pixels on demand from ŷ and the early blocks."""

    def __init__(self, config: JCCConfig) -> None:
        super().__init__()
        if config.embed_dim % (config.fusion_blocks + 1):
            raise ValueError("embed_dim must be divisible by fusion_blocks + 1")
        if config.fusion_blocks > config.depth:
            raise ValueError("fusion_blocks cannot exceed depth")
        self.config = config
        c = config
        self._add_encoder_side(c)
        self.vit = LatentViT(c.M, c.latent_shape(*c.img_size), c.embed_dim, c.depth, c.num_heads, c.mlp_ratio,
                             c.num_classes, c.drop_path_rate, c.tokenizer, c.pool)
        self.aggregation = FeatureAggregation(c.M, c.embed_dim, c.fusion_blocks)
        self.g_s = SynthesisTransform(c.embed_dim, c.decoder_channels or c.encoder_channels, c.in_chans,
                                      c.kernel_size)
        self.calibration = Calibration(c.embed_dim, c.num_classes) if c.calibrated else None

    def _add_encoder_side(self, config: JCCConfig) -> None:
        """Modules that come before ŷ: none here. The joint model adds g_a and the hyperprior in this hook, so
        they are built before the ViT as they always were (same seeded initialisation, same parameter order
        in the optimiser's groups and so in resumable checkpoints)."""

    def classify(self, y_hat: Tensor) -> Tensor:
        """Logits straight from decoded latents: the cloud's default path, no pixel decoder (divided by the
        fitted temperature when the network is calibrated)."""
        return self.analyse(y_hat)[0]

    def analyse(self, y_hat: Tensor) -> tuple[Tensor, Tensor | None]:
        """(logits, novelty): the classify path plus, when calibrated, how unlike the training data each
        latent is (`vitcodec.models.novelty`: above 1.0 is out of distribution); novelty is None otherwise."""
        logits, pooled = self.pooled_features(y_hat)
        if self.calibration is None:
            return logits, None
        return self.calibration.scale(logits), self.calibration.novelty(pooled)

    def pooled_features(self, y_hat: Tensor) -> tuple[Tensor, Tensor]:
        """(uncalibrated logits, pooled features): what calibration is fitted on."""
        pooled = self.vit.pooled(self.vit.forward_features(y_hat))
        return self.vit.head(pooled), pooled

    def reconstruct(self, y_hat: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Pixels on demand: aggregate y_hat with the early blocks, decode, crop to the original size."""
        early = self.vit.forward_early(y_hat, self.config.fusion_blocks)
        return self._decode_pixels(y_hat, early, image_size)

    def _decode_pixels(self, y_hat: Tensor, early: list[Tensor], image_size: tuple[int, int]) -> Tensor:
        x_hat = self.g_s(self.aggregation(y_hat, early))
        return x_hat[..., : image_size[0], : image_size[1]]


def load_latent_networks(package: ModelPackage, device: str | torch.device = "cpu") -> LatentNetworks:
    """The cloud networks of a compressing package, in eval mode on ``device``: how the server, ``vitcodec
    decode`` and ``vitcodec eval`` load a package.

    The package's ``weights.pt`` holds exactly these modules (stored in float16 or float32; they compute in
    float32), so they load strictly: a missing or unexpected tensor is an error, not a silently random layer.
    """
    net = LatentNetworks(JCCConfig.from_dict(package.manifest["config"]))
    state = torch.load(package.file("weights"), map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net.to(device).eval()
