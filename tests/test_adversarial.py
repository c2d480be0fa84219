"""The GAN objectives shared by the head VAE and the re-renderer, against their closed forms."""

from __future__ import annotations

import pytest
import torch

from avatar_lightning.nets.adversarial import discriminator_loss, generator_loss


def test_hinge() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    assert float(discriminator_loss(real, fake, "hinge")) == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert float(generator_loss(fake, "hinge")) == pytest.approx(1.5)


def test_least_squares() -> None:
    real, fake = torch.ones(4), torch.zeros(4)
    assert float(discriminator_loss(real, fake, "lsgan")) == 0.0
    assert float(generator_loss(fake, "lsgan")) == pytest.approx(1.0)
    assert float(discriminator_loss(fake, real, "lsgan")) == pytest.approx(2.0)
