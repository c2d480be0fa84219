"""The image formation model of paper §4, equation 1, as one pure function (training and animation share it).

    I_out = α I_orig + β I_corr + γ I_backg,   α + β + γ = 1

I_orig is the mesh rendering of the textured head model, I_corr the re-render U-Net's corrective image, I_backg
the camera's clean plate; α, β, γ are per-pixel weights (a softmax over three logits), and α + β is the
foreground mask, learned without supervision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Composition:
    """The parts of equation 1 for a batch of B images of H x W pixels.

    Attributes:
        i_out: ``(B, 3, H, W)`` in [0, 1], the composited image.
        i_corr: ``(B, 3, H, W)`` in [0, 1], the corrective image.
        alpha: ``(B, 1, H, W)`` weight of I_orig.
        beta: ``(B, 1, H, W)`` weight of I_corr.
        gamma: ``(B, 1, H, W)`` weight of the clean plate; alpha + beta + gamma = 1 everywhere.
    """

    i_out: Tensor
    i_corr: Tensor
    alpha: Tensor
    beta: Tensor
    gamma: Tensor

    @property
    def mask(self) -> Tensor:
        """``(B, 1, H, W)`` the learned foreground mask α + β, computed as 1 - γ (in [0, 1] without rounding)."""
        return 1 - self.gamma


def compose(i_orig: Tensor, raw: Tensor, plate: Tensor) -> Composition:
    """Equation 1 from the U-Net's raw 6-channel output.

    Args:
        i_orig: ``(B, 3, H, W)`` in [0, 1], the mesh rendering.
        raw: ``(B, 6, H, W)``: channels 0-2 are I_corr before a sigmoid, 3-5 the logits of α, β, γ.
        plate: ``(B|1, 3, H, W)`` in [0, 1], the clean plate I_backg.
    """
    if raw.dim() != 4 or raw.shape[1] != 6:
        raise ValueError(f"raw must be (B, 6, H, W), got {tuple(raw.shape)}")
    if i_orig.shape[1] != 3 or i_orig.shape[-2:] != raw.shape[-2:] or plate.shape[-2:] != raw.shape[-2:]:
        raise ValueError(f"i_orig {tuple(i_orig.shape)}, raw {tuple(raw.shape)} and plate {tuple(plate.shape)} "
                         "must be (B, 3|6, H, W) images of one size")
    i_corr = torch.sigmoid(raw[:, :3])  # (B, 3, H, W) in [0, 1]
    alpha, beta, gamma = torch.softmax(raw[:, 3:], dim=1).split(1, dim=1)  # each (B, 1, H, W), summing to 1
    i_out = alpha * i_orig + beta * i_corr + gamma * plate
    return Composition(i_out=i_out, i_corr=i_corr, alpha=alpha, beta=beta, gamma=gamma)
