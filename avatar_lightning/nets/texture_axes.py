"""The texture's linear code: the head VAE's appearance part of z starts at the principal axes of the textures.

Why: trained for minutes from a random start, the head VAE's convolutions decode nearly the person's mean texture
on frames they did not see. On the shared anchor (8 min, 125 held-out frames, I_orig inside the head against his
frames) the mean texture alone scores 30.3 dB, the trained VAE 30.9 dB, the tracked textures 34.1 dB, and their
first 32 principal axes, coded at 64^2 over the training frames, 32.4 dB before any training step. The same
remedy mended the geometry code (``nets.head_vae.BlendEncoding``); here it is applied to the texture's change.

The code is fixed once measured (its weights do not train; the convolutions beside it learn what it misses). Why:
Adam moves every weight by about the learning rate per step, whatever its gradient's size, and a linear map of
thousands of logits then moves each code by thousands of times that: on the synthetic actor (64^2 textures, a code
read from all 12 288 logits) the head VAE's held-out texture PSNR reached 33.0 dB in 200 steps and fell to 20-27 dB
by 400, its KL term fivefold, with the axes training at the VAE's rate.

The code is linear in the texture's logits averaged over ``factor x factor`` blocks (so that a code of a few
dozen numbers is not spent on single texels), standardised per axis: each component has unit variance over the
training frames, the scale of the VAE's prior. Decoding gives a change of logits at that coarse size, upsampled
bilinearly, which the decoder adds to the person's mean texture (full size: the detail that does not move lives
there) and to what its convolutions add (zero at the start).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# An axis whose spread is below this share of the first's is rounding, not data (float32 textures): standardised to
# unit spread it would be noise amplified, so it starts unused.
RANK_TOLERANCE = 1e-4
LOGIT_CLAMP = 0.01  # textures are clamped to [0.01, 0.99] before the logit (the decoder's mean texture too)


def texture_logits(texture: Tensor) -> Tensor:
    """``(B, 3, T, T)`` in [0, 1] -> their logits, clamped away from +-inf."""
    return torch.logit(texture.clamp(LOGIT_CLAMP, 1 - LOGIT_CLAMP))


def _check_sizes(texture_size: int, size: int) -> int:
    if size < 1 or texture_size % size or (texture_size // size) & (texture_size // size - 1):
        raise ValueError(f"the texture code's size must divide the texture size {texture_size} by a power of two, "
                         f"got {size}")
    return texture_size // size


class TextureEncoding(nn.Module):
    """Texture ``(B, 3, T, T)`` in [0, 1] -> its code ``(B, C)``: a linear map of its block-averaged logits.

    Zero until :func:`set_texture_axes` measures the axes (an unset code adds nothing to the encoder's output)."""

    def __init__(self, texture_size: int, size: int, code_dim: int) -> None:
        super().__init__()
        self.factor = _check_sizes(texture_size, size)
        self.linear = nn.Linear(3 * size * size, code_dim).requires_grad_(False)  # fixed: see the module docstring
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def blocks(self, texture: Tensor) -> Tensor:
        """``(B, 3, T, T)`` in [0, 1] -> ``(B, 3 * s * s)``: the logits averaged over each block."""
        logits = texture_logits(texture)
        return (F.avg_pool2d(logits, self.factor) if self.factor > 1 else logits).flatten(1)

    def forward(self, texture: Tensor) -> Tensor:
        return self.linear(self.blocks(texture))


class TextureDecoding(nn.Module):
    """Code ``(B, C)`` -> a change of logits ``(B, 3, T, T)``: :class:`TextureEncoding`'s inverse on its axes.

    Each code is first clamped to the range the training frames spanned (``low``, ``high``, measured with the axes).
    Why: the decoding is linear, so a code beyond anything seen paints a change beyond anything seen. The animator
    maps another person's grimace to such codes (anchor avatar driven by a shared clip, d12: blue-grey eye whites
    and a dark smear over the cheek, where the convolutional decoder alone gave a calm face)."""

    def __init__(self, texture_size: int, size: int, code_dim: int) -> None:
        super().__init__()
        self.factor = _check_sizes(texture_size, size)
        self.size = size
        self.linear = nn.Linear(code_dim, 3 * size * size).requires_grad_(False)  # fixed, as the encoding
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("low", torch.full((code_dim,), -torch.inf))
        self.register_buffer("high", torch.full((code_dim,), torch.inf))

    def forward(self, code: Tensor) -> Tensor:
        # code.shape[0], not len(code): an int would fix the batch size in torch.export
        change = self.linear(torch.clamp(code, self.low, self.high)).view(code.shape[0], 3, self.size, self.size)
        if self.factor == 1:
            return change
        return F.interpolate(change, scale_factor=float(self.factor), mode="bilinear", align_corners=False)


@torch.no_grad()
def set_texture_axes(encoding: TextureEncoding, decoding: TextureDecoding, textures: Tensor,
                     mean_logit: Tensor) -> None:
    """Set the code to the principal axes of ``textures (N, 3, T, T)`` in [0, 1] (training frames): the code is a
    texture's standardised coordinates on the first C axes of its block logits, and decoding gives back the
    change from ``mean_logit (1, 3, T, T)`` (the decoder's mean texture) that those coordinates describe, at the
    block size. Axes beyond what the frames span start unused, weights of zero both ways."""
    blocks = encoding.blocks(textures).double()  # (N, D)
    centre = blocks.mean(0)
    _, singular, axes = torch.linalg.svd(blocks - centre, full_matrices=False)  # (min(N, D),), (min(N, D), D)
    code = encoding.linear.out_features
    used = min(code, int((singular > singular[0] * RANK_TOLERANCE).sum()) if len(singular) else 0)
    spread = singular[:used] / max(len(blocks), 1) ** 0.5  # each axis's standard deviation over the frames
    weight = axes.new_zeros(code, axes.shape[1])
    weight[:used] = axes[:used] / spread[:, None]
    encoding.linear.weight.copy_(weight)
    encoding.linear.bias.copy_(-(weight @ centre))
    mean_blocks = (F.avg_pool2d(mean_logit.double(), encoding.factor) if encoding.factor > 1
                   else mean_logit.double()).flatten()
    back = axes.new_zeros(axes.shape[1], code)
    back[:, :used] = axes[:used].T * spread
    decoding.linear.weight.copy_(back)
    decoding.linear.bias.copy_(centre - mean_blocks)
    codes = (blocks - centre) @ weight.T  # (N, C): the training frames' own codes; unused axes stay at 0
    decoding.low.copy_(codes.min(0).values)
    decoding.high.copy_(codes.max(0).values)
