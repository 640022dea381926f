"""g_a: the convolutional encoder that replaces the ViT patchify stem (Bai et al., AAAI 2022)."""

from __future__ import annotations

from torch import nn


def conv(in_ch: int, out_ch: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2)


def deconv(in_ch: int, out_ch: int, kernel_size: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(
        in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, output_padding=stride - 1
    )


class ConvStem(nn.Sequential):
    """g_a, the analysis transform: stride-2 5x5 convs with LeakyReLU in between, in_chans -> hidden... -> M.
    Named for what it replaces, the ViT's patch stem; `jcc.EdgeAnalysis` is g_a and h_a together, as the edge
    runs them.

    The paper uses 3->128->128->128->192 (16x down); the width list makes it 4x for small images.
    This is the only network the edge device runs (exported to ONNX together with h_a).
    """

    def __init__(self, in_chans: int, hidden: tuple[int, ...], M: int, kernel_size: int = 5) -> None:
        widths = (in_chans, *hidden, M)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            if i:
                layers.append(nn.LeakyReLU(inplace=True))
            layers.append(conv(cin, cout, kernel_size))
        super().__init__(*layers)
