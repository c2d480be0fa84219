"""Rerenderer: the training system of the re-render U-Net (paper §4, equation 1) around ``nets.unet``.

The U-Net sees the mesh rendering I_orig (optionally with its coverage mask) and outputs six channels: the
corrective image I_corr and the logits of the weights α, β, γ; ``compose`` forms I_out = α I_orig + β I_corr +
γ I_backg. Only the captured frame supervises I_out (L1, LPIPS when its backbone file exists, optionally a
PatchGAN term); the foreground mask α + β is never supervised. Where a capture knows its true foreground
(synthetic actors), validation and test score the learned mask against it (``val/mask_iou``).
"""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import BinaryJaccardIndex
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from avatar_lightning.models.gan import adversarial_step
from avatar_lightning.nets.head_vae import PatchDiscriminator
from avatar_lightning.nets.perceptual import load_lpips
from avatar_lightning.nets.unet import UNet
from avatar_lightning.render.compose import Composition, compose

GRID_KEYS = ("i_orig", "i_corr", "alpha", "beta", "gamma", "mask", "i_out", "frame")


class Rerenderer(pl.LightningModule):
    """I_orig -> (I_corr, α, β, γ) -> I_out, trained against captured frames only.

    Args:
        in_channels: 3 (I_orig, as the paper) or 4 (I_orig plus the mesh's coverage mask, which tells a black
            texel from no mesh at all).
        depth: U-Net downsamplings.
        width: U-Net channels at full resolution (doubling per level, capped at ``max_width``).
        max_width: channel cap of the deep levels.
        norm: U-Net normalisation (``group``, ``batch``, ``none``).
        unshuffle: the U-Net's space-to-depth factor (2: every level at half the resolution, a quarter of the
            FLOPs; ``nets.unet.UNet``). Checkpoints from before it existed load with 1.
        lr: Adam learning rate (both optimisers).
        perceptual_weight: weight of LPIPS (off when 0 or when its backbone file is absent).
        lpips_backbone: path of the AlexNet file for LPIPS; None looks in torchvision's cache.
        ssim_weight: weight of ``1 - SSIM(I_out, frame)`` beside the L1. L1 alone is minimised by the mean of
            what could be there, a blur wherever the U-Net has to paint (hair, collar, mouth interior); SSIM
            compares local contrast and structure, so a soft edge costs it where L1 barely notices (Zhao et al.,
            "Loss Functions for Image Restoration with Neural Networks", 2017). Needs no download, unlike LPIPS.
        beta_weight: weight of a sparsity prior mean(β): I_corr should only repair what I_orig and the plate
            cannot show (0: the paper's losses only).
        adversarial_weight: weight of the generator's PatchGAN term on I_out (0: no discriminator).
        adversarial_start: training step at which the adversarial terms start.
        adversarial_loss: ``hinge`` or ``lsgan``.
        discriminator_layers: PatchGAN depth.
        discriminator_width: channels of its first layer.
        mask_threshold: α + β above it counts as foreground when scored against a true mask.
    """

    def __init__(
        self,
        in_channels: int = 4,
        depth: int = 4,
        width: int = 32,
        max_width: int = 256,
        norm: Literal["group", "batch", "none"] = "group",
        unshuffle: int = 1,
        lr: float = 2e-4,
        perceptual_weight: float = 0.1,
        lpips_backbone: str | None = None,
        ssim_weight: float = 0.0,
        beta_weight: float = 0.0,
        adversarial_weight: float = 0.0,
        adversarial_start: int = 0,
        adversarial_loss: Literal["hinge", "lsgan"] = "hinge",
        discriminator_layers: int = 3,
        discriminator_width: int = 32,
        mask_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        if in_channels not in (3, 4):
            raise ValueError(f"in_channels must be 3 (I_orig) or 4 (I_orig + coverage), got {in_channels}")
        if adversarial_loss not in ("hinge", "lsgan"):
            raise ValueError(f"adversarial_loss must be 'hinge' or 'lsgan', got {adversarial_loss!r}")
        if ssim_weight < 0:
            raise ValueError(f"ssim_weight must be >= 0, got {ssim_weight}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.unet = UNet(in_channels, 6, depth, width, max_width, norm, unshuffle)
        self.discriminator = (PatchDiscriminator(discriminator_layers, discriminator_width)
                              if adversarial_weight > 0 else None)
        # Not registered as a submodule (as in HeadVAE): the frozen, user-supplied LPIPS stays out of checkpoints.
        self.__dict__["lpips"] = load_lpips(lpips_backbone) if perceptual_weight > 0 else None
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{name}": metric
            for stage in ("val", "test")
            for name, metric in (("psnr", PeakSignalNoiseRatio(data_range=1.0)),
                                 ("ssim", StructuralSimilarityIndexMeasure(data_range=1.0)),
                                 ("mask_iou", BinaryJaccardIndex(threshold=mask_threshold)))
        })

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (0.5, 0.999)
        optimizers = [torch.optim.Adam(self.unet.parameters(), lr=self.hparams.lr, betas=betas)]
        if self.discriminator is not None:
            optimizers.append(torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr, betas=betas))
        return optimizers

    # ------------------------------------------------------------------ the model
    def forward(self, i_orig: Tensor, plate: Tensor, coverage: Tensor | None = None) -> Composition:
        """``i_orig (B, 3, H, W)``, ``plate (B|1, 3, H, W)``, ``coverage (B, 1, H, W)``, all in [0, 1]."""
        return compose(i_orig, self.unet(self.net_input(i_orig, coverage)), plate)

    def net_input(self, i_orig: Tensor, coverage: Tensor | None = None) -> Tensor:
        """What the U-Net sees: I_orig, plus the coverage mask as a 4th channel where ``in_channels`` is 4."""
        if self.hparams.in_channels == 4:
            if coverage is None:
                raise ValueError("this Rerenderer takes the mesh's coverage mask as a 4th input channel")
            return torch.cat([i_orig, coverage], dim=1)
        return i_orig

    def _run(self, batch: dict[str, Tensor]) -> Composition:
        return self(batch["i_orig"], batch["plate"], batch.get("coverage"))

    def _losses(self, out: Composition, frame: Tensor) -> dict[str, Tensor]:
        losses = {"l1": F.l1_loss(out.i_out, frame), "beta": out.beta.mean()}
        if self.hparams.ssim_weight > 0:
            losses["dssim"] = 1.0 - structural_similarity_index_measure(out.i_out, frame, data_range=1.0)
        if self.lpips is not None and self.hparams.perceptual_weight > 0:
            losses["lpips"] = self.lpips.to(frame.device)(out.i_out, frame)
        return losses

    def _adversarial_on(self) -> bool:
        return self.discriminator is not None and int(self.generator_steps) >= self.hparams.adversarial_start

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """One U-Net (and discriminator) update from a single backward pass (DDP-safe: ``models/gan.py``)."""
        frame = batch["frame"]
        out = self._run(batch)
        losses = self._losses(out, frame)
        loss = (losses["l1"] + self.hparams.beta_weight * losses["beta"]
                + self.hparams.ssim_weight * losses.get("dssim", 0.0)
                + self.hparams.perceptual_weight * losses.get("lpips", 0.0))
        return adversarial_step(self, self.discriminator, loss, losses, frame, out.i_out, self._adversarial_on(),
                                self.hparams.adversarial_loss, self.hparams.adversarial_weight)

    def _evaluation_step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        """Losses, PSNR / SSIM of I_out, and the learned mask's IoU with the true one where the cache has it."""
        frame = batch["frame"]
        out = self._run(batch)
        losses = self._losses(out, frame)
        psnr, ssim = self.metrics[f"{stage}_psnr"], self.metrics[f"{stage}_ssim"]
        psnr(out.i_out, frame)
        ssim(out.i_out, frame)
        self.log_dict({f"{stage}/{k}": v for k, v in losses.items()}, batch_size=len(frame), sync_dist=True)
        self.log(f"{stage}/psnr", psnr, prog_bar=True)
        self.log(f"{stage}/ssim", ssim)
        if "foreground" in batch:
            iou = self.metrics[f"{stage}_mask_iou"]
            iou(out.mask.clamp(0, 1), (batch["foreground"] > 0.5).long())
            self.log(f"{stage}/mask_iou", iou, prog_bar=True)
        grid = {"i_orig": batch["i_orig"], "i_corr": out.i_corr, "alpha": out.alpha, "beta": out.beta,
                "gamma": out.gamma, "mask": out.mask, "i_out": out.i_out, "frame": frame}
        return {key: value.expand(-1, 3, -1, -1) for key, value in grid.items()}  # (B, 3, H, W) each

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Scores on the held-out test sequence (``python -m avatar_lightning test ... --ckpt_path``)."""
        return self._evaluation_step(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """I_out and the learned mask of every item: ``i_out (B, 3, H, W)``, ``mask (B, 1, H, W)``, indices."""
        out = self._run(batch)
        return {"frame_index": batch["frame_index"], "camera": batch["camera"], "i_out": out.i_out,
                "mask": out.mask}
