"""HeadVAE: the training system of the head model (paper §4, PHE23) around ``nets.head_vae``.

Manual optimisation with two optimisers: the VAE (generator) minimises texture L1 + blend MSE + KL (with a
linear warm-up) + optional LPIPS + an adversarial term from a PatchGAN that starts after ``adversarial_start``
steps; the discriminator learns to tell captured from reconstructed textures (hinge or least squares).
``predict_step`` returns each frame's posterior mean mu: the latent z the animator learns to predict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from avatar_lightning.checkpoints import load_model
from avatar_lightning.errors import CacheError
from avatar_lightning.models.gan import adversarial_step
from avatar_lightning.nets.head_vae import HeadVAENet, PatchDiscriminator
from avatar_lightning.nets.perceptual import load_lpips
from avatar_lightning.nets.texture_axes import texture_logits


def textures_from_batch(batch: dict[str, Tensor]) -> Tensor:
    """``(B, 1, T, T, 3) uint8`` -> ``(B, 3, T, T)`` float in [0, 1]."""
    return batch["texture"][:, 0].permute(0, 3, 1, 2).float() / 255.0


class HeadVAE(pl.LightningModule):
    """The head model: z -> (blend weights b, UV texture), trained as a VAE-GAN.

    Args:
        texture_size: T; None takes it from the datamodule's cache at ``fit``.
        num_blend_shapes: K; None takes it from the cache.
        latent_dim: Z, the size of the expression latent z.
        width: channels of the first encoder/decoder level.
        lr: Adam learning rate of both optimisers.
        kl_weight: weight of the KL term after warm-up.
        kl_warmup_steps: steps over which the KL weight ramps up linearly from 0.
        blend_weight: weight of the blend-weight MSE.
        perceptual_weight: weight of LPIPS (off when 0 or when its backbone file is absent).
        lpips_backbone: path of the AlexNet file for LPIPS; None looks in torchvision's cache.
        adversarial_weight: weight of the generator's adversarial loss (0 disables the discriminator).
        adversarial_start: training step at which the adversarial terms start.
        adversarial_loss: ``hinge`` or ``lsgan``.
        discriminator_layers: PatchGAN depth (receptive field 70 texels at 3).
        discriminator_width: channels of its first layer (pix2pix uses 64; 32 costs a quarter on a CPU).
        channels_last: the VAE's convolutions in NHWC memory order (same numbers, faster; ``nets.head_vae``).
        sample_latent: draw z ~ N(mu, sigma^2) in training, the VAE (default); False decodes mu, a deterministic
            auto-encoder regularised by the KL term, whose fit depends only on which frames each step sees (the
            DDP test compares two processes with one this way: their noise draws cannot be the same).
        mean_texture: the decoder adds its texture to the person's mean texture, measured on the training frames
            when a fit starts (``nets.head_vae.HeadDecoder``); False (the checkpoints made before it) decodes the
            whole texture from z.
        motion_weight: weights the texture L1 towards the texels that change over the capture (eyes, mouth, brows):
            ``1 + motion_weight * s / mean(s)`` for a texel's temporal standard deviation ``s`` over the training
            frames, normalised to a mean of 1 (0: every texel alike). Why: they cover a few percent of the texture,
            so an L1 averaged over all of it teaches the static face first and the expression last.
        geometry_share: the share of z's dimensions (rounded, at least one on each side) that are the blend
            weights' own code: a linear code of them alone, alone decoding them, set to their principal axes when a
            fit starts (``nets.head_vae.BlendEncoding``); 0 (the checkpoints made before it): z from texture and
            blend weights together. A share, not a count, so that a config's latent_dim can change alone.
        geometry_lr_scale: the learning rate of that geometry code over ``lr``.
        texture_axes: S > 0 starts the rest of z (the appearance) at the principal axes of the training frames'
            texture logits averaged to S x S, measured when a fit starts (``nets.texture_axes``; needs
            ``mean_texture``); 0 (the checkpoints made before it): the convolutions alone, from a random start.
    """

    def __init__(
        self,
        texture_size: int | None = None,
        num_blend_shapes: int | None = None,
        latent_dim: int = 64,
        width: int = 16,
        lr: float = 2e-4,
        kl_weight: float = 1e-3,
        kl_warmup_steps: int = 2000,
        blend_weight: float = 10.0,
        perceptual_weight: float = 0.1,
        lpips_backbone: str | None = None,
        adversarial_weight: float = 0.05,
        adversarial_start: int = 2000,
        adversarial_loss: Literal["hinge", "lsgan"] = "hinge",
        discriminator_layers: int = 3,
        discriminator_width: int = 32,
        channels_last: bool = True,
        sample_latent: bool = True,
        mean_texture: bool = False,
        motion_weight: float = 0.0,
        geometry_share: float = 0.0,
        geometry_lr_scale: float = 1.0,
        texture_axes: int = 0,
    ) -> None:
        super().__init__()
        if texture_axes and not mean_texture:
            raise ValueError("texture_axes codes the change from the person's mean texture: set mean_texture too")
        if motion_weight < 0:
            raise ValueError(f"motion_weight must be 0 (every texel alike) or more, got {motion_weight}")
        if not 0 <= geometry_share < 1 or (geometry_share and latent_dim < 2):
            raise ValueError(f"geometry_share must be in [0, 1) with latent_dim >= 2 when above 0, got "
                             f"{geometry_share} with latent_dim {latent_dim}")
        if adversarial_loss not in ("hinge", "lsgan"):
            raise ValueError(f"adversarial_loss must be 'hinge' or 'lsgan', got {adversarial_loss!r}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.vae: HeadVAENet | None = None
        self.discriminator: PatchDiscriminator | None = None
        if texture_size is not None and num_blend_shapes is not None:
            self._build(texture_size, num_blend_shapes)
        # Not registered as a submodule: a frozen, user-supplied network stays out of checkpoints, so a checkpoint
        # loads whether or not the backbone file is present on the loading machine.
        self.__dict__["lpips"] = load_lpips(lpips_backbone) if perceptual_weight > 0 else None
        # Generator updates so far, saved with the weights so warm-ups resume where they stopped (Lightning's
        # global_step counts the steps of both optimisers).
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))
        # The texture L1's per-texel weight, (1, 1, T, T) once measured when a fit starts (``motion_weight``; a
        # resumed fit measures the same frames again), 1 everywhere until then. Training only: not in checkpoints.
        self.register_buffer("texel_weight", torch.ones(1, 1, 1, 1), persistent=False)
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{name}": metric(data_range=1.0)
            for stage in ("val", "test")
            for name, metric in (("psnr", PeakSignalNoiseRatio), ("ssim", StructuralSimilarityIndexMeasure))
        })

    # ------------------------------------------------------------------ construction
    def _build(self, texture_size: int, num_blend_shapes: int) -> None:
        self.hparams.texture_size, self.hparams.num_blend_shapes = texture_size, num_blend_shapes
        self.vae = HeadVAENet(texture_size, num_blend_shapes, self.hparams.latent_dim, self.hparams.width,
                              channels_last=self.hparams.get("channels_last", True),
                              mean_texture=self.hparams.get("mean_texture", False),
                              geometry_dim=self.geometry_dim,
                              texture_axes=min(self.hparams.get("texture_axes", 0), texture_size))
        if self.hparams.adversarial_weight > 0:
            self.discriminator = PatchDiscriminator(self.hparams.discriminator_layers, self.hparams.discriminator_width)

    @property
    def geometry_dim(self) -> int:
        """How many of z's first dimensions are the blend weights' own code (``geometry_share``)."""
        share, latent = self.hparams.get("geometry_share", 0.0), self.hparams.latent_dim
        return min(max(round(share * latent), 1), latent - 1) if share else 0

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        sizes = (getattr(datamodule, "texture_size", None), getattr(datamodule, "num_blend_shapes", None))
        if self.vae is None:
            if None in sizes:
                raise CacheError("HeadVAE needs texture_size and num_blend_shapes, or a HeadDataModule to read them")
            self._build(*sizes)
        elif None not in sizes and sizes != (self.hparams.texture_size, self.hparams.num_blend_shapes):
            raise CacheError(
                f"the cache holds textures of {sizes[0]}^2 and {sizes[1]} blend shapes but this model was built for "
                f"{self.hparams.texture_size}^2 and {self.hparams.num_blend_shapes}"
            )

    def on_fit_start(self) -> None:
        """On a fresh fit (a resumed one keeps the checkpoint's): the geometry code's principal axes
        (``geometry_share``) over every training frame's blend weights, and the person's mean texture
        (``mean_texture``) and the appearance code's principal axes (``texture_axes``); on every fit, each texel's
        spread (``motion_weight``). Textures are measured on up to 256 evenly spaced training frames."""
        decoder = self.vae.decoder
        motion = self.hparams.get("motion_weight", 0.0)
        fresh = int(self.generator_steps) == 0
        if fresh and self.geometry_dim:
            blend = self.trainer.datamodule.datasets["train"].first_frames("blend")
            self.vae.set_principal_axes(torch.from_numpy(np.asarray(blend, np.float64)))
        if not (decoder.mean_texture and fresh) and not motion:
            return
        axes = fresh and decoder.axes is not None
        mean, std, samples = self._texture_statistics(keep=axes)
        if decoder.mean_texture and fresh:
            decoder.mean_logit.copy_(texture_logits(mean).to(decoder.mean_logit)[None])
        if axes:
            self.vae.set_texture_axes(samples.to(decoder.mean_logit))
        if motion:
            spread = std.mean(0)  # (T, T): over the three channels
            weight = 1 + motion * spread / spread.mean().clamp_min(1e-8)
            self.texel_weight = (weight / weight.mean()).to(self.texel_weight)[None, None]

    def _texture_statistics(self, samples: int = 256, keep: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Mean and standard deviation ``(3, T, T)`` over evenly spaced training frames' textures in [0, 1], and with
        ``keep`` those textures ``(S, 3, T, T)`` (float32; else None)."""
        dataset = self.trainer.datamodule.datasets["train"]
        picks = np.unique(np.linspace(0, len(dataset) - 1, min(samples, len(dataset))).round().astype(int))
        total = squares = None
        kept = []
        for index in picks:
            texture = dataset[int(index)]["texture"][0].permute(2, 0, 1).double() / 255
            total = texture if total is None else total + texture
            squares = texture**2 if squares is None else squares + texture**2
            if keep:
                kept.append(texture.float())
        mean = total / len(picks)
        return mean, (squares / len(picks) - mean**2).clamp_min(0).sqrt(), torch.stack(kept) if keep else None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse, saying what to do, one earlier version's geometry code (an MLP, before the principal axes)."""
        if any(key.startswith("vae.encoder.geometry_mu.") for key in checkpoint.get("state_dict", {})):
            raise CacheError("this head VAE was trained with an earlier geometry code (an MLP), which this version "
                             "replaced by a linear code on the blend weights' principal axes; train the head VAE "
                             "again (python -m avatar_lightning fit --config experiments/head_vae.yaml)")

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (0.5, 0.999)
        geometry = self.vae.geometry_parameters()
        ids = {id(p) for p in geometry}
        groups = [{"params": [p for p in self.vae.parameters() if id(p) not in ids]}]
        if geometry:
            groups.append({"params": geometry, "lr": self.hparams.lr * self.hparams.get("geometry_lr_scale", 1.0)})
        optimizers = [torch.optim.Adam(groups, lr=self.hparams.lr, betas=betas)]
        if self.discriminator is not None:
            optimizers.append(torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr, betas=betas))
        return optimizers

    # ------------------------------------------------------------------ the model
    def encode(self, texture: Tensor, blend_weights: Tensor) -> Tensor:
        """Posterior mean mu ``(B, Z)`` of ``texture (B, 3, T, T)`` in [0, 1] and ``blend_weights (B, K)``."""
        return self.vae.encoder(texture, blend_weights)[0]

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``z (B, Z)`` -> ``texture (B, 3, T, T)`` in [0, 1], ``blend_weights (B, K)``."""
        return self.vae.decoder(z)

    def decode_blend_weights(self, z: Tensor) -> Tensor:
        """``z (B, Z)`` -> ``blend_weights (B, K)`` alone: the geometry head, without the texture decoder's cost."""
        return self.vae.decoder.blend_weights(z)

    def _kl_weight(self) -> float:
        warmup = max(self.hparams.kl_warmup_steps, 1)
        return self.hparams.kl_weight * min(1.0, int(self.generator_steps) / warmup)

    def _adversarial_on(self) -> bool:
        return self.discriminator is not None and int(self.generator_steps) >= self.hparams.adversarial_start

    def _reconstruction_losses(
        self, texture: Tensor, blend: Tensor, recon: Tensor, blend_out: Tensor, mu: Tensor, log_var: Tensor,
        texel_weight: Tensor | float = 1.0,
    ) -> dict[str, Tensor]:
        """The losses; ``texel_weight`` (``motion_weight``) only in training: validation and test report the plain
        L1, comparable across configs and the same whether or not a fit measured the weight first."""
        losses = {
            "texture_l1": ((recon - texture).abs() * texel_weight).mean(),
            "blend_mse": F.mse_loss(blend_out, blend),
            "kl": -0.5 * torch.mean(torch.sum(1 + log_var - mu.pow(2) - log_var.exp(), dim=1)),
        }
        if self.lpips is not None and self.hparams.perceptual_weight > 0:
            losses["lpips"] = self.lpips.to(recon.device)(recon, texture)
        return losses

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """One generator and one discriminator update from a single backward pass (DDP-safe: ``models/gan.py``)."""
        texture, blend = textures_from_batch(batch), batch["blend"][:, 0]
        recon, blend_out, mu, log_var = self.vae(texture, blend, sample=self.hparams.sample_latent)
        losses = self._reconstruction_losses(texture, blend, recon, blend_out, mu, log_var, self.texel_weight)
        loss = (
            losses["texture_l1"]
            + self.hparams.blend_weight * losses["blend_mse"]
            + self._kl_weight() * losses["kl"]
            + self.hparams.perceptual_weight * losses.get("lpips", 0.0)
        )
        return adversarial_step(self, self.discriminator, loss, losses, texture, recon, self._adversarial_on(),
                                self.hparams.adversarial_loss, self.hparams.adversarial_weight)

    def _evaluation_step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        """Reconstruct from mu (no sampling): losses, texture PSNR / SSIM and blend MSE under ``stage/``."""
        texture, blend = textures_from_batch(batch), batch["blend"][:, 0]
        recon, blend_out, mu, log_var = self.vae(texture, blend, sample=False)
        losses = self._reconstruction_losses(texture, blend, recon, blend_out, mu, log_var)
        psnr, ssim = self.metrics[f"{stage}_psnr"], self.metrics[f"{stage}_ssim"]
        psnr(recon, texture)
        ssim(recon, texture)
        self.log_dict({f"{stage}/{k}": v for k, v in losses.items()}, batch_size=len(texture), sync_dist=True)
        self.log(f"{stage}/psnr", psnr, prog_bar=True)
        self.log(f"{stage}/ssim", ssim)
        return {"input": texture, "reconstruction": recon}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Scores on the held-out test sequence (``python -m avatar_lightning test ... --ckpt_path``)."""
        return self._evaluation_step(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Posterior means of every frame, keyed for the cache writer: ``latent (B, Z)``, ``frame_index (B,)``."""
        texture, blend = textures_from_batch(batch), batch["blend"][:, 0]
        return {"frame_index": batch["frame_index"][:, 0], "latent": self.encode(texture, blend)}


def load_head_vae(checkpoint: str | Path) -> HeadVAE:
    """A trained :class:`HeadVAE` in eval mode on the CPU; a clear error for a missing or foreign file."""
    return load_model(HeadVAE, checkpoint,
                      hint="train one with `python -m avatar_lightning fit --config experiments/head_vae.yaml`")
