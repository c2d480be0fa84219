"""The head VAE's appearance code on the textures' principal axes (``nets.texture_axes``, ``texture_axes``)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avatar_lightning.cache import CaptureCache
from avatar_lightning.models.head_vae import HeadVAE, load_head_vae
from avatar_lightning.nets.head_vae import HeadVAENet
from avatar_lightning.nets.texture_axes import TextureDecoding, TextureEncoding, set_texture_axes, texture_logits
from datamodules import HeadDataModule


def _low_rank_textures(n: int, size: int, rank: int, block: int = 1, seed: int = 0) -> torch.Tensor:
    """``(n, 3, size, size)`` textures whose logits are a mean plus ``rank`` patterns, constant in blocks."""
    g = torch.Generator().manual_seed(seed)
    coarse = size // block
    patterns = torch.randn(rank, 3, coarse, coarse, generator=g)
    weights = torch.randn(n, rank, generator=g) * torch.linspace(2.0, 0.5, rank)
    logits = 0.3 * torch.randn(1, 3, coarse, coarse, generator=g) + torch.einsum("nr,rchw->nchw", weights, patterns)
    logits = logits.repeat_interleave(block, 2).repeat_interleave(block, 3)
    return torch.sigmoid(0.15 * logits)  # inside the logit clamp: the rank stays as made


def test_the_code_is_the_textures_standardised_coordinates_on_their_axes() -> None:
    """Textures of rank 4 in a code of 6: encoding then decoding gives back their logits exactly (around the mean
    texture), each used axis has unit spread over the frames, the two spare axes are zero both ways."""
    textures = _low_rank_textures(40, 16, rank=4)
    mean_logit = texture_logits(textures.mean(0, keepdim=True))
    enc, dec = TextureEncoding(16, 16, 6), TextureDecoding(16, 16, 6)
    assert enc(textures).abs().max() == 0 and dec(torch.randn(2, 6)).abs().max() == 0  # unset: adds nothing
    set_texture_axes(enc, dec, textures, mean_logit)
    with torch.no_grad():
        code = enc(textures)
        back = dec(code) + mean_logit
    torch.testing.assert_close(back, texture_logits(textures), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(code[:, :4].std(0, unbiased=False), torch.ones(4), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(code[:, :4].mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    assert code[:, 4:].abs().max() == 0 and dec.linear.weight[:, 4:].abs().max() == 0


def test_a_coarse_code_keeps_block_averages_and_the_mean_keeps_the_detail() -> None:
    """At 4x4 blocks on 16^2 textures: the code is read from the block-averaged logits, and decoding at code 0
    gives the mean texture's own detail (the full-size mean) with the frames' block averages' centre."""
    textures = _low_rank_textures(30, 16, rank=3, block=4)
    mean_logit = texture_logits(textures.mean(0, keepdim=True))
    enc, dec = TextureEncoding(16, 4, 5), TextureDecoding(16, 4, 5)
    set_texture_axes(enc, dec, textures, mean_logit)
    with torch.no_grad():
        change = dec.linear(enc(textures)).view(-1, 3, 4, 4)  # at the block size, before upsampling
        blocks = F.avg_pool2d(texture_logits(textures), 4)
        torch.testing.assert_close(change + F.avg_pool2d(mean_logit, 4), blocks, atol=1e-4, rtol=1e-4)
        assert dec(torch.zeros(1, 5)).shape == (1, 3, 16, 16)
        upsampled = F.interpolate(change, scale_factor=4.0, mode="bilinear", align_corners=False)
        torch.testing.assert_close(dec(enc(textures)), upsampled)


def test_bad_sizes_and_a_code_without_the_mean_texture_are_refused() -> None:
    for size in (0, 3, 12):  # 16 / 12 is not whole; 16 / 3 is not whole; 0 is no size
        with pytest.raises(ValueError, match="power of two"):
            TextureEncoding(16, size, 4)
    with pytest.raises(ValueError, match="power of two"):
        TextureDecoding(24, 8, 4)  # 24 / 8 = 3: not a power of two
    with pytest.raises(ValueError, match="needs mean_texture"):
        HeadVAENet(texture_size=16, num_blend_shapes=5, latent_dim=8, width=4, texture_axes=8)
    with pytest.raises(ValueError, match="set mean_texture too"):
        HeadVAE(latent_dim=8, texture_axes=8)


def test_the_vae_starts_from_the_code() -> None:
    """In the network, with the axes set: the appearance part of mu is the code alone (the convolutions' part
    starts at zero, sigma small), and decoding mu gives the textures back, where the mean texture alone does not."""
    torch.manual_seed(0)
    textures = _low_rank_textures(24, 16, rank=4)
    net = HeadVAENet(texture_size=16, num_blend_shapes=5, latent_dim=8, width=4, mean_texture=True,
                     geometry_dim=2, texture_axes=16, channels_last=False).eval()
    net.decoder.mean_logit.copy_(texture_logits(textures.mean(0, keepdim=True)))
    net.set_texture_axes(textures)
    blend = torch.randn(24, 5)
    with torch.no_grad():
        mu, log_var = net.encoder(textures, blend)
        torch.testing.assert_close(mu[:, 2:], net.encoder.axes(textures))
        assert log_var[:, 2:].max() < -2  # sigma about 0.14 on codes of unit spread
        decoded, _ = net.decoder(mu)
    mean_only = ((textures.mean(0, keepdim=True) - textures) ** 2).mean()
    assert ((decoded - textures) ** 2).mean() < 1e-6 < mean_only


def test_a_fresh_fit_sets_the_axes_and_the_checkpoint_keeps_them(synthetic_tiny: CaptureCache,
                                                                 tmp_path: Path) -> None:
    """``texture_axes``: a fresh fit measures the axes on the training frames' textures; before any learning the
    held-out frames decode closer to themselves than the mean texture is; a checkpoint decodes the same."""
    torch.manual_seed(0)
    model = HeadVAE(latent_dim=16, width=4, lr=1e-12, perceptual_weight=0.0, adversarial_weight=0.0,
                    mean_texture=True, geometry_share=0.5, texture_axes=16)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=HeadDataModule(str(synthetic_tiny.root), batch_size=4))
    assert model.vae.encoder.axes.linear.weight.abs().max() > 0
    test = np.concatenate([np.arange(s.first, s.last + 1) for s in synthetic_tiny.sequences_in("test")])
    textures = torch.from_numpy(synthetic_tiny.read("tracking/textures")[test].astype(np.float32) / 255)
    textures = textures.permute(0, 3, 1, 2)
    blend = torch.from_numpy(np.asarray(synthetic_tiny.read("tracking/blend_weights")[test], np.float32))
    model.eval()
    with torch.no_grad():
        z = model.encode(textures, blend)
        decoded = model.decode(z)[0]
        mean = model.decode(torch.zeros_like(z))[0]
    assert ((decoded - textures) ** 2).mean() < 0.8 * ((mean - textures) ** 2).mean()
    path = tmp_path / "axes.ckpt"
    trainer.save_checkpoint(path)
    with torch.no_grad():
        torch.testing.assert_close(load_head_vae(path).decode(z)[0], decoded)


class _AxesAtStart(pl.Callback):
    """Keeps a copy of the axes as training starts (after the fit has measured them, before any step)."""

    def on_train_start(self, trainer: pl.Trainer, module: HeadVAE) -> None:
        self.weights = {k: v.clone() for k, v in module.vae.state_dict().items() if ".axes." in k}
        self.conv = module.vae.encoder.mu.weight.detach().clone()


def test_the_axes_stay_fixed_while_the_rest_learns(synthetic_tiny: CaptureCache, tmp_path: Path) -> None:
    """At a learning rate that moves the convolutions, the measured axes do not move (``nets.texture_axes``: Adam
    would move a code read from thousands of logits by thousands of steps' worth at once)."""
    torch.manual_seed(0)
    model = HeadVAE(latent_dim=16, width=4, lr=1e-2, perceptual_weight=0.0, adversarial_weight=0.0,
                    mean_texture=True, geometry_share=0.5, texture_axes=16)
    start = _AxesAtStart()
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[start])
    trainer.fit(model, datamodule=HeadDataModule(str(synthetic_tiny.root), batch_size=4))
    assert start.weights and all(v.abs().max() > 0 for k, v in start.weights.items() if k.endswith("weight"))
    after = model.vae.state_dict()
    for key, value in start.weights.items():
        torch.testing.assert_close(after[key], value, atol=0, rtol=0)
    assert not torch.equal(model.vae.encoder.mu.weight, start.conv)  # the convolutions' part of mu learnt


def test_codes_beyond_the_training_frames_decode_as_the_farthest_seen() -> None:
    """Decoding is linear, so a code far beyond the training frames' range (another person's grimace through the
    animator) is clamped to that range per axis: ten times the farthest frame decodes as that frame; the training
    frames' own codes are inside and decode unchanged."""
    textures = _low_rank_textures(40, 16, rank=4)
    mean_logit = texture_logits(textures.mean(0, keepdim=True))
    enc, dec = TextureEncoding(16, 16, 6), TextureDecoding(16, 16, 6)
    set_texture_axes(enc, dec, textures, mean_logit)
    with torch.no_grad():
        code = enc(textures)
        torch.testing.assert_close(dec.low[:4], code[:, :4].min(0).values, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(dec.high[:4], code[:, :4].max(0).values, atol=1e-4, rtol=1e-4)
        assert dec.low[4:].abs().max() == 0 and dec.high[4:].abs().max() == 0  # unused axes: nothing to decode
        far = code[:, 0].argmax()
        wild = code[far : far + 1].clone()
        wild[:, 0] *= 10
        torch.testing.assert_close(dec(wild), dec(code[far : far + 1]), atol=1e-4, rtol=1e-4)
        assert (dec(wild) - dec(code[far : far + 1] * 0)).abs().max() > 0.1  # clamped, not switched off
