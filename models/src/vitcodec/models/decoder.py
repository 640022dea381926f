"""Reconstruction on demand: feature aggregation + deconvolutional decoder mirroring g_a."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from vitcodec.models.encoder import deconv


class FeatureAggregation(nn.Module):
    """Fuse y_hat with the first transformer blocks' outputs (the paper's aggregation).

    Each source is projected to D/4 per token, the four are concatenated and mixed by a D->D linear.
    """

    def __init__(self, M: int, embed_dim: int, num_blocks: int = 3) -> None:
        super().__init__()
        part = embed_dim // (num_blocks + 1)
        self.latent_proj = nn.Linear(M, part)
        self.block_projs = nn.ModuleList(nn.Linear(embed_dim, part) for _ in range(num_blocks))
        self.mix = nn.Linear(part * (num_blocks + 1), embed_dim)

    def forward(self, y_hat: Tensor, block_outputs: list[Tensor]) -> Tensor:
        b, _, h, w = y_hat.shape
        parts = [self.latent_proj(y_hat.flatten(2).transpose(1, 2))]
        parts += [proj(out) for proj, out in zip(self.block_projs, block_outputs)]
        fused = self.mix(torch.cat(parts, dim=-1))
        return fused.transpose(1, 2).reshape(b, -1, h, w)


class SynthesisTransform(nn.Sequential):
    """g_s: stride-2 5x5 transposed convs, D -> hidden (reversed g_a widths) -> image channels."""

    def __init__(self, embed_dim: int, hidden: tuple[int, ...], out_chans: int, kernel_size: int = 5) -> None:
        widths = (embed_dim, *reversed(hidden), out_chans)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            if i:
                layers.append(nn.LeakyReLU(inplace=True))
            layers.append(deconv(cin, cout, kernel_size))
        super().__init__(*layers)
