"""Every registered preset builds, has the right shapes, and classifies without the pixel decoder."""

from __future__ import annotations

import pytest
import torch
from vitcodec.models.registry import create_model, get_preset, list_models


@pytest.mark.parametrize("name", list_models())
def test_preset_shapes_and_classification_path(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = get_preset(name)
    small = name.startswith("jcc-deit")  # the 224 presets: shrink depth so the test stays fast
    model = create_model(name, depth=3 if small else None).eval()
    h, w = config.img_size
    x = torch.randn(2, config.in_chans, h, w)
    with torch.no_grad():
        y = model.encode_latent(x)
        assert y.shape == (2, config.M, *config.latent_shape(h, w))

        calls = []
        monkeypatch.setattr(model.g_s, "forward", lambda *a: calls.append(1))  # must never run
        logits = model.classify(y)
        assert logits.shape == (2, config.num_classes)
        assert not calls, "the classification path ran the pixel decoder"
        monkeypatch.undo()

        out = model(x, compress=True, reconstruct=True)
        assert out["x_hat"].shape == x.shape
        assert out["likelihoods_y"].shape == y.shape
        hz, wz = -(-y.shape[-2] // 4), -(-y.shape[-1] // 4)
        assert out["likelihoods_z"].shape == (2, config.N, hz, wz)


def test_paper_preset_is_about_30m_parameters() -> None:
    params = sum(p.numel() for p in create_model("jcc-deit-s-224").parameters())
    assert 25e6 < params < 35e6


@pytest.mark.parametrize("size", [(27, 30), (29, 33), (28, 28)])
def test_odd_sizes_are_padded_and_reconstruction_cropped(size: tuple[int, int]) -> None:
    model = create_model("jcc-fmnist-28").eval()
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        y = model.encode_latent(x)
        assert y.shape[-2:] == model.config.latent_shape(*size)
        assert model.reconstruct(y, size).shape[-2:] == size


def test_overrides_follow_timm_rules() -> None:
    model = create_model("jcc-fmnist-28", depth=3, num_classes=7, embed_dim=None)
    assert len(model.vit.blocks) == 3
    assert model.vit.head.out_features == 7
    assert model.config.embed_dim == get_preset("jcc-fmnist-28").embed_dim


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="jcc-fmnist-28"):
        create_model("no-such-preset")


@pytest.mark.parametrize("tokenizer,pool", [("linear", "cls"), ("conv", "cls"), ("linear", "seq"), ("conv", "seq")])
def test_tokenizer_and_pooling_variants(tokenizer: str, pool: str) -> None:
    """Each variant classifies from ŷ, reconstructs through the early blocks, and keeps the linear tokenizer's
    state-dict keys where it is the same (packages shipped before the variants still load)."""
    model = create_model("jcc-fmnist-28-s8", tokenizer=tokenizer, pool=pool).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        y = model.encode_latent(x)
        assert model.classify(y).shape == (3, 10)
        assert model.reconstruct(y, (28, 28)).shape == (3, 1, 28, 28)
        out = model(x, compress=False, reconstruct=True)
        assert torch.allclose(out["logits"], model.classify(y), atol=1e-5)
    keys = set(model.state_dict())
    assert ("vit.cls_token" in keys) == (pool == "cls") and ("vit.seq_pool.score.weight" in keys) == (pool == "seq")
    if tokenizer == "linear":
        assert {"vit.latent_embed.weight", "vit.latent_embed.bias"} <= keys
    assert model.vit.pos_embed.shape[1] == 16 + (pool == "cls")


def test_unknown_tokenizer_or_pool_is_refused() -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        create_model("jcc-fmnist-28-s8", tokenizer="patch")
    with pytest.raises(ValueError, match="pool"):
        create_model("jcc-fmnist-28-s8", pool="mean")
