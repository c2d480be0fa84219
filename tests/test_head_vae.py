"""The head VAE: networks, a real learning test, encoding, resuming, LPIPS loading, bad input."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torchvision

from avatar_lightning.avatar.latents import encode_cache
from avatar_lightning.cache import CacheError, CaptureCache, SequenceRecord
from avatar_lightning.cli import main
from avatar_lightning.models.head_vae import HeadVAE, load_head_vae
from avatar_lightning.nets.head_vae import HeadVAENet, PatchDiscriminator
from avatar_lightning.nets.perceptual import ALEXNET_FILE, load_lpips
from datamodules import HeadDataModule
from tests.helpers import REPO_ROOT


def _trainer(tmp_path: Path, max_steps: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                      num_sanity_val_steps=0, **kwargs)


def test_memory_order_does_not_change_the_numbers() -> None:
    """Channels-last is a speed setting only: the same weights give the same outputs and gradients either way."""
    torch.manual_seed(0)
    fast = HeadVAENet(texture_size=32, num_blend_shapes=5, latent_dim=7, width=4, channels_last=True)
    plain = HeadVAENet(texture_size=32, num_blend_shapes=5, latent_dim=7, width=4, channels_last=False)
    plain.load_state_dict(fast.state_dict())
    assert fast.decoder.texture[1].weight.is_contiguous(memory_format=torch.channels_last)
    texture, blend = torch.rand(3, 3, 32, 32), torch.rand(3, 5)
    outputs = [net(texture, blend, sample=False) for net in (fast, plain)]
    for a, b in zip(*outputs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for out in outputs:
        out[0].square().mean().backward()
    torch.testing.assert_close(fast.encoder.texture[0].weight.grad, plain.encoder.texture[0].weight.grad,
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_network_shapes_and_ranges(size: int) -> None:
    net = HeadVAENet(texture_size=size, num_blend_shapes=5, latent_dim=7, width=4)
    texture, blend = torch.rand(3, 3, size, size), torch.rand(3, 5)
    recon, blend_out, mu, log_var = net(texture, blend)
    assert recon.shape == texture.shape and blend_out.shape == blend.shape
    assert mu.shape == log_var.shape == (3, 7)
    assert recon.min() >= 0 and recon.max() <= 1
    net.eval()
    torch.testing.assert_close(net(texture, blend)[2], net(texture, blend)[2])  # mu is deterministic
    with pytest.raises(ValueError, match="power of two"):
        HeadVAENet(texture_size=48)


def test_geometry_latent_reads_and_writes_the_blend_weights_alone() -> None:
    """With ``geometry_dim`` G (``geometry_share`` of latent_dim) the first G dimensions of mu come from the blend
    weights alone (a texture changes none of them) and alone decode the blend weights (the other dimensions change
    none of them), while the texture still reads them; their code learns at its own rate; bad sizes are
    refused."""
    torch.manual_seed(0)
    net = HeadVAENet(texture_size=16, num_blend_shapes=5, latent_dim=7, width=4, geometry_dim=3).eval()
    net.set_principal_axes(torch.rand(50, 5))
    blend = torch.rand(2, 5)
    mu_a, log_var = net.encoder(torch.rand(2, 3, 16, 16), blend)
    mu_b, _ = net.encoder(torch.rand(2, 3, 16, 16), blend)
    assert mu_a.shape == log_var.shape == (2, 7)
    torch.testing.assert_close(mu_a[:, :3], mu_b[:, :3])
    assert (mu_a[:, 3:] - mu_b[:, 3:]).abs().max() > 1e-4  # the appearance part sees the texture
    assert (log_var[:, :3] == 0).all()  # deterministic geometry: KL mu^2 / 2 there, and never sampled
    net.train()
    texture = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(net(texture, blend, sample=True)[1], net(texture, blend, sample=True)[1])
    net.eval()
    z = torch.randn(2, 7)
    other = z.clone()
    other[:, 3:] = torch.randn(2, 4)
    texture, weights = net.decoder(z)
    texture_other, weights_other = net.decoder(other)
    torch.testing.assert_close(weights, weights_other)
    assert not torch.allclose(texture, texture_other)
    geometry = z.clone()
    geometry[:, :3] += 1
    assert not torch.allclose(net.decoder(geometry)[0], texture)  # the texture follows the expression too
    for bad in (-1, 7):
        with pytest.raises(ValueError, match="geometry_dim"):
            HeadVAENet(texture_size=16, num_blend_shapes=5, latent_dim=7, width=4, geometry_dim=bad)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="geometry_share"):
            HeadVAE(latent_dim=7, geometry_share=bad)
    assert [HeadVAE(latent_dim=z, geometry_share=0.5).geometry_dim for z in (2, 7, 64)] == [1, 4, 32]
    assert HeadVAE(latent_dim=64, geometry_share=0.99).geometry_dim == 63  # one appearance dimension at least
    assert HeadVAE(latent_dim=64).geometry_dim == 0

    model = HeadVAE(texture_size=16, num_blend_shapes=5, latent_dim=6, width=4, geometry_share=0.5, lr=1e-4,
                    geometry_lr_scale=5.0, perceptual_weight=0.0)
    rest, geometry = model.configure_optimizers()[0].param_groups
    assert geometry["lr"] == pytest.approx(5e-4) and rest["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in geometry["params"]} == {id(p) for p in model.vae.geometry_parameters()}
    assert len(rest["params"]) + len(geometry["params"]) == len(list(model.vae.parameters()))
    assert model.vae.encoder.geometry_dim == model.vae.decoder.geometry_dim == 3
    z = torch.randn(2, 6, requires_grad=True)
    model.vae.decoder(z)[0].sum().backward()
    assert (z.grad[:, :3] == 0).all() and (z.grad[:, 3:] != 0).any()  # the texture takes the geometry as given


def test_geometry_code_starts_at_the_principal_axes_of_the_blend_weights() -> None:
    """``set_principal_axes``: blend weights that span G standardised directions come back exactly through a G-d
    code; the code's coordinates are uncorrelated over the frames, in falling order of spread; with more code
    dimensions than shapes the spare ones start unused; a shape that never moves does not divide by zero."""
    torch.manual_seed(0)
    frames, shapes, rank = 300, 6, 3
    blend = torch.rand(frames, rank) @ torch.randn(rank, shapes) * torch.tensor([1, 5, 0.1, 2, 1, 0.5]) + 0.3
    net = HeadVAENet(texture_size=16, num_blend_shapes=shapes, latent_dim=5, width=4, geometry_dim=rank).eval()
    net.set_principal_axes(blend.double())
    with torch.no_grad():
        code = net.encoder.geometry(blend)
        torch.testing.assert_close(net.decoder.blend_weights(torch.cat([code, torch.zeros(frames, 2)], 1)), blend,
                                   atol=1e-4, rtol=1e-4)
    covariance = torch.cov(code.T.double())
    assert (covariance - torch.diag(torch.diag(covariance))).abs().max() < 1e-4 * covariance.max()
    assert (torch.diag(covariance)[:-1] >= torch.diag(covariance)[1:]).all()
    torch.testing.assert_close(net.encoder.geometry.blend_mean, blend.mean(0), atol=1e-5, rtol=1e-5)

    wide = HeadVAENet(texture_size=16, num_blend_shapes=shapes, latent_dim=10, width=4, geometry_dim=8).eval()
    still = torch.cat([blend[:, :5], torch.full((frames, 1), 0.2)], dim=1)  # the last shape never moves
    wide.set_principal_axes(still)
    with torch.no_grad():
        code = wide.encoder.geometry(still)
        torch.testing.assert_close(wide.decoder.blend_weights(torch.cat([code, torch.zeros(frames, 2)], 1)), still,
                                   atol=1e-4, rtol=1e-4)
    assert torch.isfinite(code).all()
    assert (wide.encoder.geometry.linear.weight[shapes:] == 0).all()
    assert (wide.decoder.blend.linear.weight[:, shapes:] == 0).all()


def test_a_fresh_fit_sets_the_geometry_code_from_the_training_frames(synthetic_tiny: CaptureCache,
                                                                   tmp_path: Path) -> None:
    """A fresh fit with ``geometry_share`` starts the blend weights' code at their principal axes over the training
    frames: before any learning, decode(encode) keeps their spread; the checkpoint keeps the axes."""
    torch.manual_seed(0)
    model = HeadVAE(latent_dim=32, width=4, lr=1e-12, perceptual_weight=0.0, adversarial_weight=0.0,
                    geometry_share=0.75)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=HeadDataModule(str(synthetic_tiny.root), batch_size=4))
    train = np.concatenate([np.arange(s.first, s.last + 1) for s in synthetic_tiny.sequences_in("train")])
    blend = torch.from_numpy(np.asarray(synthetic_tiny.read("tracking/blend_weights")[train], np.float32))
    torch.testing.assert_close(model.vae.encoder.geometry.blend_mean.float(), blend.mean(0), atol=1e-5, rtol=1e-5)
    model.eval()
    with torch.no_grad():
        z = model.vae.encoder.geometry(blend)
        decoded = model.vae.decoder.blend(z)
    assert (decoded - blend).pow(2).sum() < 1e-3 * (blend - blend.mean(0)).pow(2).sum()
    path = tmp_path / "axes.ckpt"
    trainer.save_checkpoint(path)
    with torch.no_grad():
        torch.testing.assert_close(load_head_vae(path).vae.decoder.blend(z), decoded)
    earlier = torch.load(path, weights_only=False)  # the previous version's MLP geometry code, by its key
    earlier["state_dict"]["vae.encoder.geometry_mu.weight"] = torch.zeros(24, 128)
    torch.save(earlier, tmp_path / "earlier.ckpt")
    with pytest.raises(CacheError, match="earlier geometry code.*train the head VAE again"):
        load_head_vae(tmp_path / "earlier.ckpt")


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_patch_discriminator_receptive_field(layers: int) -> None:
    disc = PatchDiscriminator(num_layers=layers, width=4).eval()
    for i, module in enumerate(disc.net):  # instance norm mixes every position; the convolutions set the field
        if isinstance(module, torch.nn.InstanceNorm2d):
            disc.net[i] = torch.nn.Identity()
    texture = torch.rand(1, 3, 128, 128, requires_grad=True)
    logits = disc(texture)
    logits[0, 0, logits.shape[2] // 2, logits.shape[3] // 2].backward()
    rows = torch.nonzero(texture.grad.abs().sum((0, 1)).sum(1))
    assert rows.max() - rows.min() + 1 == PatchDiscriminator.receptive_field(layers)
    assert PatchDiscriminator.receptive_field(3) == 70  # pix2pix's 70x70 PatchGAN


def test_one_training_step_updates_both_networks(synthetic_tiny: CaptureCache, tmp_path: Path) -> None:
    model = HeadVAE(latent_dim=8, width=4, perceptual_weight=0, adversarial_start=0, discriminator_layers=2)
    data = HeadDataModule(str(synthetic_tiny.root), batch_size=4)
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    model.trainer = trainer
    data.setup("fit")
    trainer.datamodule = data  # let setup() read the sizes before we take a snapshot
    model.setup("fit")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit(model, datamodule=data)
    after = model.state_dict()
    for prefix in ("vae.encoder.", "vae.decoder.", "discriminator."):
        changed = [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]
        assert changed, f"no parameter of {prefix} changed"
    assert int(model.generator_steps) == 1 and trainer.global_step == 2


def _small_cache(root: Path, textures: np.ndarray, blend: np.ndarray) -> CaptureCache:
    n = len(textures)
    cache = CaptureCache.create(root, fps=25, num_frames=n, sequences=[SequenceRecord("train", 0, n - 1, "train")])
    cache.write_array("tracking/textures", textures, stage="test", per_frame=True)
    cache.write_array("tracking/blend_weights", blend, stage="test", per_frame=True)
    return cache


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_overfitting_a_handful_of_frames_cuts_texture_l1_five_fold(synthetic_tiny: CaptureCache, tmp_path: Path,
                                                                   precision: str) -> None:
    """In float32 and in Lightning's bf16 mixed precision (autocast): both train, channels-last as by default."""
    frames = np.arange(0, 160, 20)  # 8 frames, different expressions and head poses
    textures = synthetic_tiny.read("tracking/textures")[frames]
    textures = torch.nn.functional.interpolate(torch.from_numpy(textures).permute(0, 3, 1, 2).float(), size=32,
                                               mode="area").round().byte().permute(0, 2, 3, 1).numpy()
    cache = _small_cache(tmp_path / "few", textures, synthetic_tiny.read("tracking/blend_weights")[frames])
    data = HeadDataModule(str(cache.root), batch_size=8)
    model = HeadVAE(latent_dim=16, width=8, lr=3e-3, kl_weight=1e-5, kl_warmup_steps=1, perceptual_weight=0,
                    adversarial_weight=0)
    target = torch.from_numpy(textures).permute(0, 3, 1, 2).float() / 255
    blend = torch.from_numpy(cache.read("tracking/blend_weights"))

    def l1() -> float:
        model.eval()
        with torch.no_grad():
            error = float((model.decode(model.encode(target, blend))[0] - target).abs().mean())
        model.train()
        return error

    trainer = _trainer(tmp_path, max_steps=250, limit_val_batches=0, precision=precision)
    data.setup("fit")
    model.trainer, trainer.datamodule = trainer, data
    model.setup("fit")
    start = l1()
    trainer.fit(model, datamodule=data)
    end = l1()
    assert end < start / 5, f"texture L1 {start:.4f} -> {end:.4f}"


def test_fit_encode_and_resume_through_the_cli(synthetic_tiny: CaptureCache, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    base = ["fit", "--config", str(REPO_ROOT / "experiments" / "head_vae.yaml"),
            "--config", str(REPO_ROOT / "experiments" / "head_vae_tiny.yaml"),
            f"--data.init_args.cache_dir={synthetic_tiny.root}", f"--trainer.default_root_dir={runs}",
            f"--trainer.logger.init_args.save_dir={runs}", "--trainer.enable_progress_bar=false",
            "--trainer.val_check_interval=4", "--trainer.limit_val_batches=1"]
    assert main([*base, "--trainer.max_steps=8"]) == 0
    last = next(runs.rglob("last.ckpt"))
    assert list(runs.rglob("images/*/step_*.png")), "no reconstruction grid was written"
    assert main([*base, "--trainer.max_steps=12", f"--ckpt_path={last}"]) == 0
    resumed_path = next(p for p in runs.rglob("last.ckpt") if p != last)  # the second run's own version folder
    resumed = torch.load(resumed_path, weights_only=False)
    assert resumed["global_step"] == 12
    assert int(resumed["state_dict"]["generator_steps"]) == 6

    cache = synthetic_tiny
    model = load_head_vae(last)
    copy = _small_cache(tmp_path / "encode", cache.read("tracking/textures"), cache.read("tracking/blend_weights"))
    first = np.array(encode_cache(model, copy, "run"))
    second = np.array(encode_cache(load_head_vae(last), copy, "run"))
    assert first.shape == (cache.num_frames, model.hparams.latent_dim)
    np.testing.assert_array_equal(first, second)
    assert CaptureCache(copy.root).record("latents/run").stage == "encode"
    assert main(["encode", "--ckpt", str(last), "--cache", str(copy.root), "--name", "cli"]) == 0
    np.testing.assert_allclose(CaptureCache(copy.root).read("latents/cli"), first, rtol=1e-5, atol=1e-6)


def test_lpips_loads_the_users_backbone_file(tmp_path: Path) -> None:
    path = tmp_path / ALEXNET_FILE
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)  # the real file's layout
    lpips = load_lpips(path)
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    assert float(lpips(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(lpips(x, y)) > 0
    with pytest.raises(FileNotFoundError, match=ALEXNET_FILE):
        load_lpips(tmp_path / "absent.pth")
    torch.save({"classifier.1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not an AlexNet"):
        load_lpips(tmp_path / "wrong.pth")


def test_lpips_absent_is_a_clear_warning_not_a_random_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.warns(UserWarning, match=f"LPIPS perceptual loss is off.*{ALEXNET_FILE}"):
        model = HeadVAE(texture_size=16, num_blend_shapes=3, perceptual_weight=0.1)
    assert model.lpips is None


def test_a_cache_without_textures_names_the_stage(tiny_cache: CaptureCache) -> None:
    data = HeadDataModule(str(tiny_cache.root))
    with pytest.raises(CacheError, match=r"tracking/textures.*synth"):
        data.setup("fit")


def test_encode_refuses_missing_or_foreign_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="does not exist"):
        load_head_vae(tmp_path / "none.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CacheError, match="not a HeadVAE checkpoint"):
        load_head_vae(tmp_path / "foreign.ckpt")


def test_mean_texture_starts_at_the_persons_mean_and_travels_with_the_checkpoint(synthetic_tiny: CaptureCache,
                                                                                 tmp_path: Path) -> None:
    """``mean_texture``: a fresh fit measures the training frames' mean texture; before the decoder has learned
    anything every latent decodes to it (not to grey); the checkpoint keeps it; the default model has no such buffer,
    so checkpoints made before it load as they did."""
    torch.manual_seed(0)
    model = HeadVAE(latent_dim=8, width=4, lr=1e-12, perceptual_weight=0.0, adversarial_weight=0.0,
                    mean_texture=True)
    data = HeadDataModule(str(synthetic_tiny.root), batch_size=4)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    train = np.concatenate([np.arange(s.first, s.last + 1) for s in synthetic_tiny.sequences_in("train")])
    picks = np.unique(np.linspace(0, len(train) - 1, min(256, len(train))).round().astype(int))
    mean = synthetic_tiny.read("tracking/textures")[train[picks]].astype(np.float64).mean(0) / 255  # (T, T, 3)
    with torch.no_grad():
        texture, _ = model.eval().decode(torch.randn(3, 8))
    decoded = texture.permute(0, 2, 3, 1).numpy()
    assert np.abs(decoded - np.clip(mean, 0.01, 0.99)).max() < 1e-3
    path = tmp_path / "mean.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_head_vae(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(torch.zeros(1, 8))[0], model.decode(torch.zeros(1, 8))[0])
    plain = HeadVAE(texture_size=64, num_blend_shapes=17, latent_dim=8, width=4, perceptual_weight=0.0,
                    adversarial_weight=0.0)
    assert not plain.vae.decoder.mean_texture and "mean_logit" not in dict(plain.vae.decoder.named_buffers())


def test_motion_weight_leans_the_texture_loss_towards_what_moves(synthetic_tiny: CaptureCache, tmp_path: Path) -> None:
    """``motion_weight``: each texel's L1 weight grows with its spread over the training frames (mean 1); at 0 the
    loss is the plain L1; the weight is measured again when a fit resumes, not saved."""
    torch.manual_seed(0)
    model = HeadVAE(latent_dim=8, width=4, lr=1e-12, perceptual_weight=0.0, adversarial_weight=0.0,
                    motion_weight=4.0)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=HeadDataModule(str(synthetic_tiny.root), batch_size=4))
    weight = model.texel_weight[0, 0].numpy()
    assert weight.shape == (64, 64) and weight.mean() == pytest.approx(1.0, rel=1e-5)
    train = np.concatenate([np.arange(s.first, s.last + 1) for s in synthetic_tiny.sequences_in("train")])
    spread = (synthetic_tiny.read("tracking/textures")[train].astype(np.float64) / 255).std(0).mean(-1)
    assert np.corrcoef(weight.ravel(), spread.ravel())[0, 1] > 0.95  # the texels that move weigh most
    assert weight.max() > 3 * weight.min()
    assert "texel_weight" not in model.state_dict()
    recon, texture = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    blend, mu, log_var = torch.rand(2, 17), torch.zeros(2, 8), torch.zeros(2, 8)
    plain = HeadVAE(texture_size=64, num_blend_shapes=17, latent_dim=8, width=4, perceptual_weight=0.0,
                    adversarial_weight=0.0)
    with pytest.raises(ValueError, match="motion_weight must be 0"):
        HeadVAE(texture_size=64, num_blend_shapes=17, motion_weight=-1.0)
    losses = plain._reconstruction_losses(texture, blend, recon, blend, mu, log_var)
    torch.testing.assert_close(losses["texture_l1"], torch.nn.functional.l1_loss(recon, texture))
    # Validation reports the plain L1 even after a weighted fit: ``validate`` outside a fit never measures the
    # weight, and scores must compare across configs.
    model.eval()
    batch = next(iter(trainer.datamodule.val_dataloader()))
    logged = {}
    model.log_dict = lambda values, **_: logged.update(values)
    model.log = lambda *_, **__: None
    with torch.no_grad():
        out = model.validation_step(batch, 0)
    torch.testing.assert_close(logged["val/texture_l1"],
                               torch.nn.functional.l1_loss(out["reconstruction"], out["input"]))
