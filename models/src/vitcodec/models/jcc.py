"""The joint compression–classification transformer (Bai et al., "Towards End-to-End Image Compression
and Analysis with Transformers", AAAI 2022).

::

    x ─► pad ─► g_a ─► y ─► [h_a ─► z ─► Q ─► h_s ─► (μ, σ)] ─► y_hat = round(y − μ) + μ
                                                                    │
                                    classification (default):       ├─► LatentViT ─► logits
                                    reconstruction (on demand):     └─► aggregate(y_hat, blocks 1..k) ─► g_s ─► x_hat

The classification path never touches g_s. Step one (``compress=False``) trains without the hyperprior.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vitcodec.models.config import JCCConfig
from vitcodec.models.encoder import ConvStem
from vitcodec.models.hyperprior import MeanScaleHyperprior
from vitcodec.models.latent_networks import LatentNetworks


class JointCompressionClassifier(LatentNetworks):
    """The whole network: g_a and the hyperprior (training, export) on top of the cloud's `LatentNetworks`
    (ViT, aggregation, g_s), whose state-dict keys it keeps."""

    def _add_encoder_side(self, config: JCCConfig) -> None:
        c = config
        self.g_a = ConvStem(c.in_chans, c.encoder_channels, c.M, c.kernel_size)
        self.hyperprior = MeanScaleHyperprior(c.M, c.N)

    # -- geometry -------------------------------------------------------------------------------
    def pad(self, x: Tensor) -> Tensor:
        """Zero-pad (in normalised space) bottom/right up to a multiple of g_a's stride."""
        s = self.config.stride
        h, w = x.shape[-2:]
        ph, pw = (-h) % s, (-w) % s
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

    # -- the pieces (classify and reconstruct come from LatentNetworks) ---------------------------------
    def encode_latent(self, x: Tensor) -> Tensor:
        return self.g_a(self.pad(x))

    # -- training forward --------------------------------------------------------------------------
    def forward(self, x: Tensor, compress: bool = True, reconstruct: bool = True) -> dict[str, Tensor]:
        """One pass for training: logits, optional reconstruction, and likelihoods when compressing."""
        out: dict[str, Tensor] = {}
        y = self.encode_latent(x)
        if compress:
            with torch.autocast(device_type=x.device.type, enabled=False):
                coded = self.hyperprior(y.float())
            y_hat = coded["y_hat"]
            out["likelihoods_y"], out["likelihoods_z"] = coded["y_likelihoods"], coded["z_likelihoods"]
        else:
            y_hat = y
        tokens = self.vit.embed(y_hat)
        early: list[Tensor] = []
        for i, block in enumerate(self.vit.blocks):
            tokens = block(tokens)
            if reconstruct and i < self.config.fusion_blocks:
                early.append(tokens[:, self.vit.num_prefix_tokens:])
        out["logits"] = self.vit.forward_head(self.vit.norm(tokens))
        if reconstruct:
            out["x_hat"] = self._decode_pixels(y_hat, early, (x.shape[-2], x.shape[-1]))
        return out

    def aux_loss(self) -> Tensor:
        return self.hyperprior.aux_loss()

    def update(self, force: bool = True) -> bool:
        return self.hyperprior.update(force=force)


class EdgeAnalysis(nn.Module):
    """g_a (`ConvStem`) and h_a in float: the network exported to ``encoder.onnx`` for the edge runtime
    (`vitcodec.edge.encoder.EdgeEncoder`); rounding and coding happen in codec/."""

    def __init__(self, model: JointCompressionClassifier) -> None:
        super().__init__()
        self.g_a = model.g_a
        self.h_a = model.hyperprior.h_a

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.g_a(x)
        return y, self.h_a(y)
