"""The two GAN objectives both models use with the PatchGAN: hinge (default) or least squares (LSGAN)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

AdversarialLoss = Literal["hinge", "lsgan"]


def generator_loss(fake_logits: Tensor, kind: AdversarialLoss) -> Tensor:
    """What the generator minimises so the discriminator calls its output real."""
    if kind == "hinge":
        return -fake_logits.mean()
    return F.mse_loss(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, kind: AdversarialLoss) -> Tensor:
    """What the discriminator minimises to tell captured (real) from generated (fake) images."""
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    real = F.mse_loss(real_logits, torch.ones_like(real_logits))
    return real + F.mse_loss(fake_logits, torch.zeros_like(fake_logits))
