"""Mean-scale hyperprior (Minnen et al. 2018) around compressai's entropy models.

h_s uses plain ReLU (not LeakyReLU) so that after training it converts to exact integer arithmetic
(``vitcodec.codec.integer_hyper_synthesis``): the edge and the cloud must derive bit-identical entropy
parameters, which float h_s cannot guarantee across runtimes.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from vitcodec.models.encoder import conv, deconv
from vitcodec.models.errors import TrainingExtraMissing

try:
    with warnings.catch_warnings():
        # compressai decorates helpers with torch.jit.script at import time, which torch 2.14 flags as
        # deprecated; the warning is about compressai's code, not ours, and would print on every CLI command.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        from compressai.entropy_models import EntropyBottleneck, GaussianConditional
        from compressai.models.google import get_scale_table  # 64 log-spaced scales, 0.11 to 256
        from compressai.models.utils import update_registered_buffers
except ImportError as exc:  # the training extra is not installed (a server install): say which extra to add
    if (exc.name or "").split(".")[0] != "compressai":
        raise
    raise TrainingExtraMissing() from exc

# compressai's integer CDF buffers: their sizes depend on the tables, so they are sized from a state dict
# before it is loaded (as compressai's CompressionModel.load_state_dict does).
_CDF_BUFFERS = {
    "entropy_bottleneck": ("_quantized_cdf", "_offset", "_cdf_length"),
    "gaussian_conditional": ("_quantized_cdf", "_offset", "_cdf_length", "scale_table"),
}


class HyperAnalysis(nn.Sequential):
    """h_a: y -> z, 4x further down (runs on the edge in float; z is rounded before coding)."""

    def __init__(self, M: int, N: int) -> None:
        super().__init__(
            conv(M, N, kernel_size=3, stride=1), nn.LeakyReLU(inplace=True),
            conv(N, N), nn.LeakyReLU(inplace=True),
            conv(N, N),
        )


class HyperSynthesis(nn.Sequential):
    """h_s: z_hat -> (scales, means) for y; ReLU-only so it has an exact integer twin."""

    def __init__(self, M: int, N: int) -> None:
        super().__init__(
            deconv(N, M), nn.ReLU(inplace=True),
            deconv(M, M * 3 // 2), nn.ReLU(inplace=True),
            conv(M * 3 // 2, M * 2, kernel_size=3, stride=1),
        )


class MeanScaleHyperprior(nn.Module):
    """Codes y with a Gaussian whose mean and scale come from the hyper-latent z."""

    def __init__(self, M: int, N: int) -> None:
        super().__init__()
        self.M, self.N = M, N
        self.h_a = HyperAnalysis(M, N)
        self.h_s = HyperSynthesis(M, N)
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)

    def entropy_parameters(self, z_hat: Tensor, latent_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        params = self.h_s(z_hat)[..., : latent_hw[0], : latent_hw[1]]
        scales, means = params.chunk(2, 1)
        return scales, means

    def forward(self, y: Tensor) -> dict[str, Tensor]:
        """Training-time pass: noisy likelihoods for the rate, straight-through rounded y_hat."""
        z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        scales, means = self.entropy_parameters(z_hat, (y.shape[-2], y.shape[-1]))
        _, y_likelihoods = self.gaussian_conditional(y, scales, means=means)
        y_hat = _round_ste(y - means) + means
        return {"y_hat": y_hat, "y_likelihoods": y_likelihoods, "z_likelihoods": z_likelihoods}

    def aux_loss(self) -> Tensor:
        return self.entropy_bottleneck.loss()

    def update(self, force: bool = True) -> bool:
        """Fill the integer CDF tables (compressai's explicit update step) before any real coding."""
        updated = self.gaussian_conditional.update_scale_table(get_scale_table(), force=force)
        updated |= self.entropy_bottleneck.update(force=force)
        return updated


    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args, **kwargs) -> None:
        """Size the CDF buffers from the incoming tensors (compressai's helper), then load as usual."""
        for name, buffers in _CDF_BUFFERS.items():
            present = [b for b in buffers if f"{prefix}{name}.{b}" in state_dict]
            update_registered_buffers(getattr(self, name), f"{prefix}{name}", present, state_dict, policy="resize")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _round_ste(x: Tensor) -> Tensor:
    return x + (torch.round(x) - x).detach()
