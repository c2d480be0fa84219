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


class UNet(nn.Module):
    """Encoder-decoder with skip connections at every level and a 1x1 convolution head.

    ``depth`` stride-2 downsamplings (max pooling), each doubling the channels (capped at ``max_width``);
    the decoder upsamples bilinearly and concatenates the encoder's features of the same level. Inputs of
    any size work: they are padded (replicate) to a multiple of ``2**depth`` and the output is cropped back.

    Args:
        in_channels: input channels (3: I_orig; 4: I_orig plus its coverage mask).
        out_channels: output channels (6 for the re-renderer: RGB and three weight logits).
        depth: number of downsamplings (levels below the full resolution).
        width: channels at full resolution.
        max_width: cap on the channels of the deeper levels.
        norm: ``group`` (batch-size independent, the default), ``batch`` or ``none``.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 6, depth: int = 4, width: int = 32,
                 max_width: int = 256, norm: Norm = "group") -> None:
        super().__init__()
        if depth < 0 or width < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError(f"need depth >= 0 and positive channel counts, got depth={depth}, width={width}")
        if norm not in ("group", "batch", "none"):
            raise ValueError(f"norm must be group, batch or none, got {norm!r}")
        self.depth = depth
        widths = [min(width * 2**level, max_width) for level in range(depth + 1)]
        self.down = nn.ModuleList([ConvBlock(in_channels, widths[0], norm)])
        self.down.extend(ConvBlock(widths[i - 1], widths[i], norm) for i in range(1, depth + 1))
        self.up = nn.ModuleList(ConvBlock(widths[i + 1] + widths[i], widths[i], norm) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, C_in, H, W)`` -> ``(B, C_out, H, W)`` raw outputs (no activation)."""
        h, w = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = -h % multiple, -w % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips: list[Tensor] = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)[..., :h, :w]
