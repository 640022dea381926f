"""The transformer that classifies decoded latents directly (no pixels, no patch stem)."""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn


class LatentViT(nn.Module):
    """ViT over y_hat tokens: linear M->D, cls token, learned positions, timm Blocks, norm, head.

    ``forward_features`` returns all tokens; ``forward_head`` pools the cls token. ``forward_early``
    exposes the outputs of the first blocks for the reconstruction path's feature aggregation.
    """

    def __init__(self, M: int, grid: tuple[int, int], embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float, num_classes: int, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.grid = tuple(grid)
        num_tokens = grid[0] * grid[1]
        self.num_tokens = num_tokens
        self.latent_embed = nn.Linear(M, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1, embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def embed(self, y_hat: Tensor) -> Tensor:
        tokens = self.latent_embed(y_hat.flatten(2).transpose(1, 2))
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.position_embedding(tuple(y_hat.shape[-2:]))

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """Learned positions, bicubically resampled when the latent grid differs from training's."""
        if grid == self.grid:
            return self.pos_embed
        return resample_abs_pos_embed(self.pos_embed, new_size=list(grid), old_size=list(self.grid),
                                      num_prefix_tokens=1)

    def forward_features(self, y_hat: Tensor) -> Tensor:
        x = self.embed(y_hat)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_early(self, y_hat: Tensor, n: int) -> list[Tensor]:
        """Outputs (patch tokens only) of the first ``n`` blocks, for feature aggregation."""
        x = self.embed(y_hat)
        outs = []
        for block in self.blocks[:n]:
            x = block(x)
            outs.append(x[:, 1:])
        return outs

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features[:, 0])

    def forward(self, y_hat: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(y_hat))

def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
