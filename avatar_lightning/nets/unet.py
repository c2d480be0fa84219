"""A U-Net [RPB15]: the re-render network of paper §4 (I_orig in, RGB plus three weight logits out)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Norm = Literal["group", "batch", "none"]


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by normalisation and LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), _norm(norm, out_channels), nn.LeakyReLU(0.2),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), _norm(norm, out_channels), nn.LeakyReLU(0.2),
        )


def _icnr_(conv: nn.Conv2d, factor: int) -> None:
    """Give the ``factor``² output channels that pixel-shuffle into one block the same initial weights and bias
    (pixel-shuffle puts output channel ``c * factor² + k`` at position ``k`` of channel ``c``'s block)."""
    with torch.no_grad():
        channels = conv.out_channels // factor**2
        seed = nn.Conv2d(conv.in_channels, channels, conv.kernel_size)  # the layer's default initialisation
        conv.weight.copy_(seed.weight.repeat_interleave(factor**2, dim=0))
        if conv.bias is not None:
            conv.bias.copy_(seed.bias.repeat_interleave(factor**2))


class UNet(nn.Module):
    """Encoder-decoder with skip connections at every level and a 1x1 convolution head.

    ``depth`` stride-2 downsamplings (max pooling), each doubling the channels (capped at ``max_width``);
    the decoder upsamples bilinearly and concatenates the encoder's features of the same level. Inputs of
    any size work: they are padded (replicate) to a multiple of ``unshuffle * 2**depth`` and the output is
    cropped back.

    ``unshuffle`` > 1 folds each ``unshuffle``² block of pixels into channels before the first convolution
    (pixel-unshuffle, space-to-depth) and unfolds the head's output back (pixel-shuffle): every level then runs
    at ``1/unshuffle`` of the resolution, so a 3x3 convolution costs ``unshuffle``² times less while the output
    keeps full resolution (each output pixel still has its own weights in the head). At ``unshuffle=2`` and one
    level less, the network sees the same receptive field for a quarter of the FLOPs (``benchmarks/networks.py``).
    A pixel-shuffled output is made of 2x2 blocks, each from one position of the half-resolution features; early
    in training that shows as blockiness (lower SSIM at equal PSNR, ``benchmarks/quality_at_equal_time.py``). So a
    3x3 convolution at full resolution over the shuffled output and the input adds a correction (zero at
    initialisation: the network starts as the plain unshuffled one), for about 1 % of the FLOPs. And the head is
    initialised ICNR-style (Aitken et al. 2017, "Checkerboard artifact free sub-pixel convolution"): the
    ``unshuffle``² outputs that fill one block start with the same weights, so the first output is the coarse one
    upsampled by nearest neighbour, not a 2-pixel dotted pattern that training must first undo.

    Args:
        in_channels: input channels (3: I_orig; 4: I_orig plus its coverage mask).
        out_channels: output channels (6 for the re-renderer: RGB and three weight logits).
        depth: number of downsamplings (levels below the full resolution).
        width: channels at full resolution.
        max_width: cap on the channels of the deeper levels.
        norm: ``group`` (batch-size independent, the default), ``batch`` or ``none``.
        unshuffle: space-to-depth factor of the input (1: the plain U-Net at full resolution).
        channels_last: keep weights and activations in channels-last (NHWC) memory order. Same numbers; oneDNN's
            convolutions on CPU and tensor cores on GPU run faster on it (measured in ``benchmarks/networks.py``).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 6, depth: int = 4, width: int = 32,
                 max_width: int = 256, norm: Norm = "group", unshuffle: int = 1, channels_last: bool = True) -> None:
        super().__init__()
        if depth < 0 or width < 1 or in_channels < 1 or out_channels < 1 or unshuffle < 1:
            raise ValueError(f"need depth >= 0, unshuffle >= 1 and positive channel counts, got depth={depth}, "
                             f"width={width}, unshuffle={unshuffle}")
        if norm not in ("group", "batch", "none"):
            raise ValueError(f"norm must be group, batch or none, got {norm!r}")
        self.depth, self.unshuffle, self.channels_last = depth, unshuffle, channels_last
        widths = [min(width * 2**level, max_width) for level in range(depth + 1)]
        self.down = nn.ModuleList([ConvBlock(in_channels * unshuffle**2, widths[0], norm)])
        self.down.extend(ConvBlock(widths[i - 1], widths[i], norm) for i in range(1, depth + 1))
        self.up = nn.ModuleList(ConvBlock(widths[i + 1] + widths[i], widths[i], norm) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels * unshuffle**2, 1)
        if unshuffle > 1:
            _icnr_(self.head, unshuffle)
        self.refine = nn.Conv2d(out_channels + in_channels, out_channels, 3, padding=1) if unshuffle > 1 else None
        if self.refine is not None:
            nn.init.zeros_(self.refine.weight)
            nn.init.zeros_(self.refine.bias)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, C_in, H, W)`` -> ``(B, C_out, H, W)`` raw outputs (no activation)."""
        h, w = x.shape[-2:]
        multiple = self.unshuffle * 2**self.depth
        pad_h, pad_w = -h % multiple, -w % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        full = x
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        skips: list[Tensor] = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        x = self.head(x)
        if self.refine is not None:
            x = F.pixel_shuffle(x, self.unshuffle)
            x = x + self.refine(torch.cat([x, full.to(x.dtype)], dim=1))
        return x[..., :h, :w]
