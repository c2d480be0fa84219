"""The generator + discriminator update that HeadVAE and Rerenderer share: one backward pass, so DDP works.

Lightning wraps the whole LightningModule, generator and discriminator together, in one
``DistributedDataParallel``. Without ``find_unused_parameters`` DDP all-reduces gradients once per backward
pass and expects every parameter it wraps to receive a gradient in each one. The textbook manual-optimisation
GAN step (Lightning's own example: backward of the generator's loss, step, then backward of the
discriminator's loss on detached fakes, step; ``toggle_optimizer`` or not) breaks that twice: the
discriminator's backward reaches no generator parameter, and before ``adversarial_start`` the discriminator
takes no part at all. ``--trainer.strategy=ddp`` then stops with "Expected to have finished reduction in the
prior iteration" (Lightning issues #20328 and #20866: its basic GAN example fails the same way).

:func:`update` runs both losses through one backward pass, which is the same arithmetic:

- the generator's adversarial term judges its output with the discriminator's parameters held fixed
  (:func:`judge_as_generator`), so its gradient reaches the generator only; in the two-pass step the
  discriminator's gradient from this term was discarded by ``opt_d.zero_grad()`` anyway;
- the discriminator judges detached fakes, so its loss reaches the discriminator only; the fakes are those of
  the generator before its step, as in the two-pass step (the discriminator's loss never depended on the
  generator's new weights);
- an idle discriminator (before ``adversarial_start``) joins the pass through :func:`idle`, an exact zero that
  depends on each of its parameters; its zero gradients are dropped again before ``opt_d.step()``, so Adam
  keeps no state for it, as before.

One all-reduce per batch instead of two, and no ``find_unused_parameters`` (whose graph search would cost
every step for what is a fixed schedule).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from avatar_lightning.nets.adversarial import discriminator_loss, generator_loss


def judge_as_generator(discriminator: nn.Module, fake: Tensor) -> Tensor:
    """``discriminator(fake)`` with the discriminator's parameters held fixed: gradient flows to ``fake`` only."""
    fixed = {name: parameter.detach() for name, parameter in discriminator.named_parameters()}
    return torch.func.functional_call(discriminator, fixed, (fake,))


def idle(module: nn.Module) -> Tensor:
    """An exact zero that depends on every parameter of ``module``: keeps it in the backward pass, at no cost."""
    return sum(parameter.sum() for parameter in module.parameters()) * 0.0


def update(module: pl.LightningModule, generator_loss: Tensor, discriminator_loss: Tensor | None,
           discriminator_learns: bool) -> None:
    """One step of the generator's optimiser (the first) and, if there is one, of the discriminator's.

    Args:
        module: a LightningModule in manual optimisation whose ``configure_optimizers`` returns the generator's
            optimiser first; its ``generator_steps`` buffer counts generator updates.
        generator_loss: reaches the generator's parameters only (see :func:`judge_as_generator`).
        discriminator_loss: reaches the discriminator's parameters only (fakes detached), or :func:`idle` of
            the discriminator while it does not learn; None without a discriminator.
        discriminator_learns: False before ``adversarial_start``: the discriminator's optimiser steps without
            gradients (a no-op), so Lightning's ``global_step`` still counts two steps per batch.
    """
    optimizers = module.optimizers()
    opt_g, *rest = optimizers if isinstance(optimizers, list) else [optimizers]
    total = generator_loss
    if rest:
        if discriminator_loss is None:
            raise ValueError("a discriminator optimiser needs a discriminator loss (idle() while it does not learn)")
        total = total + discriminator_loss
    for optimizer in (opt_g, *rest):
        optimizer.zero_grad(set_to_none=True)
    module.manual_backward(total)
    opt_g.step()
    module.generator_steps += 1
    if rest:
        opt_d = rest[0]
        if not discriminator_learns:
            opt_d.zero_grad(set_to_none=True)  # the idle term's zeros: no Adam state, as if it had no gradient
        opt_d.step()


def adversarial_step(module: pl.LightningModule, discriminator: nn.Module | None, loss: Tensor,
                     losses: dict[str, Tensor], real: Tensor, fake: Tensor, adversarial: bool, kind: str,
                     weight: float) -> Tensor:
    """The end of both models' ``training_step``: the adversarial terms, :func:`update`, and the training logs.

    Args:
        discriminator: the PatchGAN, or None without one.
        loss: the generator's reconstruction loss so far; ``losses`` its terms by name (extended here).
        real, fake: the discriminator's inputs, captured and generated (``fake`` keeps its graph).
        adversarial: whether the adversarial term is on (after ``adversarial_start``).
        kind, weight: the adversarial loss (hinge or least squares) and its weight in the generator's loss.

    Returns the generator's total loss.
    """
    d_loss = None
    if adversarial:
        losses["g_adv"] = generator_loss(judge_as_generator(discriminator, fake), kind)
        loss = loss + weight * losses["g_adv"]
        # the discriminator learns alongside the generator once the term is on
        d_loss = discriminator_loss(discriminator(real), discriminator(fake.detach()), kind)
        losses["d_loss"] = d_loss.detach()
    elif discriminator is not None:
        d_loss = idle(discriminator)
    update(module, loss, d_loss, discriminator_learns=adversarial)
    module.log_dict({f"train/{k}": v for k, v in losses.items()}, on_step=True, on_epoch=False)
    module.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
    return loss
