"""The transformer that classifies decoded latents directly (no pixels, no patch stem)."""

from __future__ import annotations

import torch
from timm.layers.pos_embed import resample_abs_pos_embed
from timm.layers.weight_init import trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn


class ConvTokenizer(nn.Module):
    """ŷ -> tokens through a residual 3x3 conv block (M -> D -> D, plus a 1x1 skip).

    The paper's tokenizer is one linear map per latent position, so each token sees only its own position
    until the first attention layer. Convolutional tokenizers (CvT, CCT) give each token its neighbourhood
    first, which small transformers trained from scratch need to rival CNNs; on a 4x4 grid the block costs
    about as much as one transformer block.
    """

    def __init__(self, M: int, embed_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(M, embed_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        self.skip = nn.Conv2d(M, embed_dim, 1)
        self.act = nn.GELU()

    def forward(self, y_hat: Tensor) -> Tensor:
        x = self.conv2(self.act(self.conv1(y_hat))) + self.skip(y_hat)
        return x.flatten(2).transpose(1, 2)


class LinearTokenizer(nn.Linear):
    """ŷ -> tokens: one M -> D linear map per latent position (the paper's replacement of the patch stem)."""

    def forward(self, y_hat: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(y_hat.flatten(2).transpose(1, 2))


class SequencePool(nn.Module):
    """Attention-weighted mean of the tokens (CCT's sequence pooling): one learned score per token."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(embed_dim, 1)

    def forward(self, tokens: Tensor) -> Tensor:
        weights = torch.softmax(self.score(tokens).float(), dim=1).to(tokens.dtype)
        return (weights * tokens).sum(dim=1)


class LatentViT(nn.Module):
    """ViT over y_hat tokens: tokenizer (linear or conv), cls token or sequence pooling, learned positions,
    timm Blocks, norm, head.

    ``forward_features`` returns all tokens (the cls token first when there is one); ``forward_head`` pools
    them. ``forward_early`` exposes the outputs of the first blocks for the reconstruction path's feature
    aggregation.
    """

    def __init__(self, M: int, grid: tuple[int, int], embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float, num_classes: int, drop_path_rate: float = 0.0, tokenizer: str = "linear",
                 pool: str = "cls") -> None:
        super().__init__()
        self.grid = tuple(grid)
        num_tokens = grid[0] * grid[1]
        self.num_tokens = num_tokens
        # "latent_embed" keeps the linear tokenizer's state-dict keys of the packages shipped before it
        self.latent_embed = ConvTokenizer(M, embed_dim) if tokenizer == "conv" else LinearTokenizer(M, embed_dim)
        self.num_prefix_tokens = 1 if pool == "cls" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if pool == "cls" else None
        self.seq_pool = SequencePool(embed_dim) if pool == "seq" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + self.num_prefix_tokens, embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def embed(self, y_hat: Tensor) -> Tensor:
        tokens = self.latent_embed(y_hat)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return tokens + self.position_embedding((y_hat.shape[-2], y_hat.shape[-1]))

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """Learned positions, bicubically resampled when the latent grid differs from training's."""
        if grid == self.grid:
            return self.pos_embed
        return resample_abs_pos_embed(self.pos_embed, new_size=list(grid), old_size=list(self.grid),
                                      num_prefix_tokens=self.num_prefix_tokens)

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
            outs.append(x[:, self.num_prefix_tokens:])
        return outs

    def pooled(self, features: Tensor) -> Tensor:
        """One vector per image: the cls token, or the sequence-pooled tokens."""
        return self.seq_pool(features) if self.seq_pool is not None else features[:, 0]

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(self.pooled(features))

    def forward(self, y_hat: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(y_hat))

def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
