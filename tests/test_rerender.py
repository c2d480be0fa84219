"""The re-render U-Net (paper §4, eq. 1): composition, U-Net, I_orig renders, data, learning, the unsupervised mask."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from avatar_lightning.avatar.mesh_renders import render_cache
from avatar_lightning.cache import CacheError, CaptureCache
from avatar_lightning.cache.layout import body_arrays
from avatar_lightning.cache.template import load_template
from avatar_lightning.cli import main
from avatar_lightning.models.head_vae import HeadVAE
from avatar_lightning.models.rerender import Rerenderer
from avatar_lightning.nets.unet import UNet
from avatar_lightning.render import Cameras, RasterSettings, render_textured
from avatar_lightning.render.body import BodyLayer, frame_plates
from avatar_lightning.render.compose import compose
from datamodules.rerender import RerenderDataModule
from tests.helpers import REPO_ROOT

RUN = "tracking"


def _trainer(tmp_path: Path, max_steps: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                      num_sanity_val_steps=0, **kwargs)


@pytest.fixture(scope="module")
def rendered(synthetic_tiny: CaptureCache, tmp_path_factory: pytest.TempPathFactory) -> CaptureCache:
    """A copy of the tiny synthetic actor with I_orig of the tracked textures in ``renders/tracking``."""
    root = tmp_path_factory.mktemp("rerender") / "tiny"
    shutil.copytree(synthetic_tiny.root, root)
    cache = CaptureCache(root)
    render_cache(cache, RUN, "tracking", device="cpu")
    return CaptureCache(root)


# ---------------------------------------------------------------------------------------------- equation 1
def test_weights_are_a_partition_of_unity() -> None:
    raw = torch.randn(4, 6, 9, 11) * 20  # logits from moderate to saturated
    raw[0, 3:] = torch.tensor([1e4, -1e4, 0.0])[:, None, None]  # overflow-prone extremes
    i_orig, plate = torch.rand(4, 3, 9, 11), torch.rand(1, 3, 9, 11)
    out = compose(i_orig, raw, plate)
    total = out.alpha + out.beta + out.gamma
    torch.testing.assert_close(total, torch.ones_like(total))
    for weight in (out.alpha, out.beta, out.gamma, out.mask):
        assert weight.shape == (4, 1, 9, 11) and weight.min() >= 0 and weight.max() <= 1
    assert out.i_out.min() >= 0 and out.i_out.max() <= 1 + 1e-6 and out.i_corr.shape == (4, 3, 9, 11)
    torch.testing.assert_close(out.mask, out.alpha + out.beta)


def test_alpha_one_inside_the_mesh_returns_i_orig_there() -> None:
    i_orig, plate = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    inside = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    inside[:, :, 4:12, 3:10] = True
    logits = torch.where(inside, torch.tensor([30.0, -30.0, -30.0])[:, None, None],  # α = 1, β = 0 in the mesh
                         torch.tensor([-30.0, 0.0, 0.0])[:, None, None])  # elsewhere plate and I_corr share
    raw = torch.cat([torch.randn(2, 3, 16, 16), logits], dim=1)
    out = compose(i_orig, raw, plate)
    region = inside.expand(-1, 3, -1, -1)
    torch.testing.assert_close(out.i_out[region], i_orig[region])
    torch.testing.assert_close(out.beta[inside], torch.zeros_like(out.beta[inside]))
    assert not torch.allclose(out.i_out[~region], i_orig[~region])
    with pytest.raises(ValueError, match="6"):
        compose(i_orig, raw[:, :5], plate)


@pytest.mark.parametrize(("depth", "size"), [(0, (8, 8)), (3, (64, 64)), (3, (37, 50)), (4, (48, 80))])
def test_unet_keeps_the_image_size(depth: int, size: tuple[int, int]) -> None:
    net = UNet(in_channels=4, out_channels=6, depth=depth, width=4)
    assert net(torch.rand(2, 4, *size)).shape == (2, 6, *size)


@pytest.mark.parametrize(("unshuffle", "depth", "size"), [(2, 0, (8, 8)), (2, 3, (64, 64)), (2, 3, (37, 50)),
                                                       (3, 2, (25, 31))])
def test_unshuffled_unet_keeps_the_image_size(unshuffle: int, depth: int, size: tuple[int, int]) -> None:
    net = UNet(in_channels=4, out_channels=6, depth=depth, width=4, unshuffle=unshuffle)
    assert net(torch.rand(2, 4, *size)).shape == (2, 6, *size)
    assert net.down[0][0].in_channels == 4 * unshuffle**2 and net.head.out_channels == 6 * unshuffle**2


def test_unet_memory_order_does_not_change_the_numbers() -> None:
    """Channels-last is a speed setting only: the same weights give the same outputs in either order."""
    torch.manual_seed(0)
    fast = UNet(in_channels=4, out_channels=6, depth=3, width=8, unshuffle=2, channels_last=True).eval()
    plain = UNet(in_channels=4, out_channels=6, depth=3, width=8, unshuffle=2, channels_last=False).eval()
    plain.load_state_dict(fast.state_dict())
    assert fast.head.weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.head.weight.is_contiguous()
    x = torch.rand(2, 4, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=1e-4)


def test_unshuffled_unet_still_gives_every_output_pixel_its_own_value() -> None:
    """Space-to-depth runs the levels at half resolution, yet a 1-pixel checkerboard (which any output made at
    half resolution and upsampled cannot draw) is learned: the head has its own weights per sub-pixel."""
    torch.manual_seed(0)
    net = UNet(in_channels=1, out_channels=1, depth=1, width=8, unshuffle=2, norm="none")
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    target = ((rows + cols) % 2).float()[None, None]
    x = torch.full_like(target, 0.5)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), target)
        loss.backward()
        optimiser.step()
    assert loss.item() < 1e-3  # a constant or any blurred output scores 0.25


def test_unshuffled_unet_starts_without_a_dotted_pattern() -> None:
    """ICNR: at initialisation every 2x2 block of the head's shuffled output is one value (nearest-neighbour
    upsampling of the half-resolution map), so no 2-pixel dotting is drawn before training has undone it."""
    torch.manual_seed(0)
    net = UNet(in_channels=3, out_channels=6, depth=2, width=8, unshuffle=2).eval()
    assert net.refine is not None
    with torch.no_grad():
        out = net(torch.rand(2, 3, 32, 32))  # the refine convolution starts at zero: this is the head's output
    blocks = out.unflatten(2, (16, 2)).unflatten(4, (16, 2))  # (B, C, 16, 2, 16, 2)
    spread = (blocks - blocks.mean(dim=(3, 5), keepdim=True)).abs().max()
    assert spread < 1e-6 and out.std() > 1e-3  # constant within each block, not across the image
    plain = UNet(in_channels=3, out_channels=6, depth=2, width=8, unshuffle=1)  # nothing to shuffle: untouched
    assert plain.head.out_channels == 6


def test_unet_rejects_a_bad_unshuffle() -> None:
    with pytest.raises(ValueError, match="unshuffle"):
        UNet(unshuffle=0)


def test_unet_skip_connections_carry_full_resolution_detail() -> None:
    """One input pixel changes the output at that pixel through the level-0 skip even at depth 4."""
    net = UNet(in_channels=3, out_channels=6, depth=4, width=4, norm="none").eval()
    x = torch.zeros(1, 3, 32, 32, requires_grad=True)
    net(x)[0, :, 10, 20].sum().backward()
    assert x.grad[0, :, 10, 20].abs().sum() > 0
    assert x.grad[0].abs().sum((0, 1)).nonzero().numel() > 0


# ---------------------------------------------------------------------------------------------- I_orig renders
def test_render_mesh_matches_the_renderer(rendered: CaptureCache) -> None:
    frame, camera = 17, rendered.cameras[1]
    image, mask = rendered.array(f"renders/{RUN}/{camera.name}"), rendered.array(f"renders/{RUN}/{camera.name}.mask")
    assert image.shape == (rendered.num_frames, camera.height, camera.width, 3) and image.dtype == np.uint8
    assert mask.shape == image.shape[:3] and set(np.unique(mask)) <= {0, 255}
    assert rendered.record(f"renders/{RUN}/{camera.name}").stage == "render-mesh"
    mesh = load_template(rendered)
    vertices = mesh.deform(torch.from_numpy(rendered.read("tracking/blend_weights", frame, frame + 1)),
                           torch.from_numpy(rendered.read("tracking/pose", frame, frame + 1)))
    texture = torch.from_numpy(rendered.read("tracking/textures", frame, frame + 1)).float() / 255
    expected, coverage = render_textured(mesh, vertices, texture, Cameras.from_dict(camera),
                                         RasterSettings(backend="torch"))
    np.testing.assert_allclose(image[frame] / 255, expected[0].numpy(), atol=1 / 255 + 1e-6)
    np.testing.assert_array_equal(mask[frame] > 127, coverage[0, ..., 0].numpy() > 0.5)
    assert 0.05 < (mask > 127).mean() < 0.5  # the face covers part of each image, not all of it


def test_render_mesh_with_head_vae_textures(rendered: CaptureCache, tmp_path: Path) -> None:
    """The default source: the VAE's reconstruction of each tracked texture (as animation will produce)."""
    root = tmp_path / "copy"
    shutil.copytree(rendered.root, root)
    cache = CaptureCache(root)
    torch.manual_seed(0)
    vae = HeadVAE(texture_size=64, num_blend_shapes=17, latent_dim=8, width=4, perceptual_weight=0,
                  adversarial_weight=0).eval()
    names = render_cache(cache, "vae", "vae", vae, cameras=["frontal"], batch_size=64, device="cpu")
    assert names == ["renders/vae/frontal", "renders/vae/frontal.mask"]
    frame = 3
    with torch.no_grad():
        texture = torch.from_numpy(cache.read("tracking/textures", frame, frame + 1)).permute(0, 3, 1, 2) / 255
        blend = torch.from_numpy(cache.read("tracking/blend_weights", frame, frame + 1))
        z = vae.encode(texture.float(), blend)
        recon = vae.decode(z)[0].permute(0, 2, 3, 1)
    mesh = load_template(cache)
    vertices = mesh.deform(blend, torch.from_numpy(cache.read("tracking/pose", frame, frame + 1)))
    expected, _ = render_textured(mesh, vertices, recon, Cameras.from_dict(cache.camera("frontal")))
    np.testing.assert_allclose(cache.read("renders/vae/frontal", frame, frame + 1)[0] / 255, expected[0].numpy(),
                               atol=1 / 255 + 1e-5)
    # Decoding stored latents gives the same renders as encoding then decoding.
    with torch.no_grad():
        all_textures = torch.from_numpy(cache.read("tracking/textures")).permute(0, 3, 1, 2).float() / 255
        latents = vae.encode(all_textures, torch.from_numpy(cache.read("tracking/blend_weights"))).numpy()
    cache.write_array("latents/vae", latents, stage="test", per_frame=True)
    render_cache(cache, "from_latents", "latents", vae, latents="vae", cameras=["frontal"], device="cpu")
    np.testing.assert_allclose(cache.read("renders/from_latents/frontal").astype(int),
                               cache.read("renders/vae/frontal").astype(int), atol=1)
    with pytest.raises(CacheError, match="--ckpt"):
        render_cache(cache, "none", "vae", None)


def test_render_mesh_command(rendered: CaptureCache, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(rendered.root, root)
    argv = ["render-mesh", "--cache", str(root), "--name", "cli", "--textures", "tracking", "--camera", "frontal"]
    assert main(argv) == 0
    cache = CaptureCache(root)
    assert cache.names("renders/cli/*") == ["renders/cli/frontal", "renders/cli/frontal.mask"]
    np.testing.assert_array_equal(cache.read("renders/cli/frontal"), cache.read(f"renders/{RUN}/frontal"))
    assert main(["render-mesh", "--cache", str(root), "--name", "x"]) == 2  # vae textures need --ckpt


# ---------------------------------------------------------------------------------------------- data
def test_datamodule_pairs_renders_frames_and_plates(rendered: CaptureCache) -> None:
    data = RerenderDataModule(str(rendered.root), run=RUN, batch_size=5)
    data.setup("fit")
    cameras = data.cameras
    train_frames = sum(s.num_frames for s in rendered.sequences_in("train"))
    assert len(data.datasets["train"]) == train_frames * len(cameras)
    assert len(data.datasets["val"]) == sum(s.num_frames for s in rendered.sequences_in("val")) * len(cameras)
    batch = next(iter(data.train_dataloader()))
    for key, channels in (("i_orig", 3), ("frame", 3), ("plate", 3), ("coverage", 1), ("foreground", 1)):
        assert batch[key].shape == (5, channels, 64, 64) and batch[key].dtype == torch.float32, key
        assert 0 <= batch[key].min() and batch[key].max() <= 1
    for i in range(5):
        frame, camera = int(batch["frame_index"][i]), cameras[int(batch["camera"][i])]
        np.testing.assert_array_equal((batch["frame"][i].permute(1, 2, 0) * 255).round().byte().numpy(),
                                      rendered.read(f"cameras/{camera}/frames", frame, frame + 1)[0])
        np.testing.assert_array_equal((batch["plate"][i].permute(1, 2, 0) * 255).round().byte().numpy(),
                                      rendered.read(f"cameras/{camera}/clean_plate"))
        np.testing.assert_array_equal((batch["i_orig"][i].permute(1, 2, 0) * 255).round().byte().numpy(),
                                      rendered.read(f"renders/{RUN}/{camera}", frame, frame + 1)[0])
    val_frames = {int(item["frame_index"]) for item in data.datasets["val"]}
    assert val_frames == {f for s in rendered.sequences_in("val") for f in range(s.first, s.last + 1)}
    one = RerenderDataModule(str(rendered.root), run=RUN, cameras=["diagonal_left"])
    one.setup("test")
    assert len(one.datasets["test"]) == sum(s.num_frames for s in rendered.sequences_in("test"))


def test_each_frame_gets_the_body_plate_moved_by_its_own_torso_sway(rendered: CaptureCache, tmp_path: Path) -> None:
    """Where ``prepare`` made a body plate, the U-Net learns over the plate the renderer will give it at that frame
    (``render.body``): the clean plate with the body laid over it at the frame's tracked sway."""
    root = tmp_path / "tiny"
    shutil.copytree(rendered.root, root)
    cache = CaptureCache(root)
    camera = cache.cameras[0]
    rng = np.random.default_rng(0)
    body = rng.integers(0, 255, (camera.height, camera.width, 3), dtype=np.uint8)
    mask = np.zeros((camera.height, camera.width), np.uint8)
    mask[40:] = 255
    sways = rng.uniform(-3, 3, (cache.num_frames, 2)).astype(np.float32)
    for name, data, per_frame in zip(body_arrays(camera.name), (body, mask, sways, np.zeros((7, 2), np.float32)),
                                     (False, False, True, False), strict=True):
        cache.write_array(name, data, stage="test", per_frame=per_frame)
    data = RerenderDataModule(str(root), run=RUN, cameras=[camera.name], batch_size=4)
    data.setup("fit")
    clean = torch.from_numpy(cache.read(f"cameras/{camera.name}/clean_plate")).permute(2, 0, 1)[None].float() / 255
    layer = BodyLayer.from_arrays(body, mask, np.zeros((7, 2)), np.zeros((2, 2)))
    plates = set()
    for index in (0, 3, 7):
        item = data.datasets["train"][index]
        frame = int(item["frame_index"])
        expected = frame_plates(clean, layer.plate, layer.mask, torch.from_numpy(sways[frame : frame + 1]))[0]
        torch.testing.assert_close(item["plate"], expected)
        plates.add(item["plate"].sum().item())
    assert len(plates) == 3  # each frame its own plate
    other = RerenderDataModule(str(root), run=RUN, cameras=[cache.cameras[1].name])  # no body plate: the clean one
    other.setup("fit")
    np.testing.assert_array_equal((other.datasets["train"][0]["plate"].permute(1, 2, 0) * 255).round().byte().numpy(),
                                  cache.read(f"cameras/{cache.cameras[1].name}/clean_plate"))


def test_missing_renders_name_the_render_mesh_stage(rendered: CaptureCache) -> None:
    data = RerenderDataModule(str(rendered.root), run="never_rendered")
    with pytest.raises(CacheError, match=r"renders/never_rendered/.*render-mesh"):
        data.setup("fit")
    with pytest.raises(CacheError, match="no camera"):
        RerenderDataModule(str(rendered.root), run=RUN, cameras=["nope"]).setup("fit")


# ---------------------------------------------------------------------------------------------- learning
@pytest.fixture
def one_thread() -> Iterator[None]:
    """Training tests run on one thread: on a shared 2-core machine OpenMP's spin-waiting stalls every op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_overfitting_a_few_frames_cuts_l1_three_fold(rendered: CaptureCache, tmp_path: Path, one_thread: None
                                                      ) -> None:
    data = RerenderDataModule(str(rendered.root), run=RUN)
    data.setup("fit")
    few = Subset(data.datasets["train"], list(range(0, len(data.datasets["train"]), 53))[:8])
    batch = next(iter(DataLoader(few, batch_size=8)))
    torch.manual_seed(0)
    model = Rerenderer(depth=3, width=16, lr=2e-3, perceptual_weight=0)

    def l1() -> float:
        with torch.no_grad():
            return float((model(batch["i_orig"], batch["plate"], batch["coverage"]).i_out - batch["frame"]).abs()
                         .mean())

    start = l1()
    _trainer(tmp_path, max_steps=150, limit_val_batches=0).fit(model, DataLoader(few, batch_size=8))
    end = l1()
    assert end < start / 3, f"L1 {start:.4f} -> {end:.4f}"


def test_adversarial_step_updates_both_networks(rendered: CaptureCache, tmp_path: Path) -> None:
    data = RerenderDataModule(str(rendered.root), run=RUN, batch_size=2)
    data.setup("fit")
    model = Rerenderer(depth=2, width=4, perceptual_weight=0, adversarial_weight=0.1, discriminator_layers=2,
                       discriminator_width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model, data.train_dataloader())
    after = model.state_dict()
    for prefix in ("unet.", "discriminator."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    assert int(model.generator_steps) == 1 and trainer.global_step == 2
    with pytest.raises(ValueError, match="coverage"):
        model(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_ssim_term_charges_a_blur_that_l1_lets_pass() -> None:
    """The SSIM term's reason to exist: of two outputs with the same L1 to a sharp frame, a blurred one and a
    noisy one, L1 cannot choose; 1 - SSIM charges the blur more than twice as much. Identical images cost nothing."""
    from torchvision.transforms.functional import gaussian_blur

    from avatar_lightning.render.compose import Composition

    torch.manual_seed(0)
    frame = (torch.rand(2, 3, 1, 1) * 0.5 + 0.25).expand(-1, -1, 64, 64).clone()
    frame[:, :, ::8] = 1.0  # sharp stripes: what a blur erases
    blurred = gaussian_blur(frame, [9, 9], [2.0, 2.0])
    noise = torch.where(frame > 0.9, -1.0, torch.randn_like(frame).sign())  # never past 1: no clipping
    noisy = frame + noise * (blurred - frame).abs().mean()
    model = Rerenderer(depth=2, width=4, perceptual_weight=0, ssim_weight=1.0)

    def losses(image: torch.Tensor) -> dict[str, torch.Tensor]:
        alpha = torch.ones_like(image[:, :1])
        return model._losses(Composition(image, image, alpha, alpha * 0, alpha * 0), frame)

    blur, grain, same = losses(blurred), losses(noisy), losses(frame)
    assert float(blur["l1"]) == pytest.approx(float(grain["l1"]), rel=0.05)
    assert float(blur["dssim"]) > 2 * float(grain["dssim"])
    assert float(same["dssim"]) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="ssim_weight"):
        Rerenderer(ssim_weight=-0.1, perceptual_weight=0)


def test_ssim_term_trains_the_unet(rendered: CaptureCache, tmp_path: Path) -> None:
    data = RerenderDataModule(str(rendered.root), run=RUN, batch_size=2)
    data.setup("fit")
    torch.manual_seed(0)
    model = Rerenderer(depth=2, width=4, perceptual_weight=0, ssim_weight=0.5)
    batch = next(iter(data.train_dataloader()))
    out = model(batch["i_orig"], batch["plate"], batch["coverage"])
    loss = model._losses(out, batch["frame"])["dssim"]
    loss.backward()
    assert 0 < float(loss) <= 2 and all(p.grad is not None for p in model.unet.parameters())


def _mask_iou(model: Rerenderer, dataset: torch.utils.data.Dataset) -> float:
    """IoU of the learned mask (α + β > 0.5) with the true foreground (> 127) over all of ``dataset``."""
    intersection = union = 0
    model.eval()
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=64):
            mask = model(batch["i_orig"], batch["plate"], batch["coverage"]).mask > 0.5
            truth = batch["foreground"] > 0.5
            intersection += int((mask & truth).sum())
            union += int((mask | truth).sum())
    return intersection / union


def _fit_and_score(rendered: CaptureCache, tmp_path: Path, steps: int) -> tuple[float, float, float]:
    """Train the tiny experiment's Rerenderer for ``steps``; (IoU before, IoU on held-out frames after, seconds)."""
    torch.manual_seed(0)
    data = RerenderDataModule(str(rendered.root), run=RUN, batch_size=8)
    data.setup(None)
    model = Rerenderer(depth=3, width=16, lr=2e-3, perceptual_weight=0)
    before = _mask_iou(model, data.datasets["test"])
    start = time.perf_counter()
    _trainer(tmp_path, max_steps=steps, limit_val_batches=0).fit(model, data.train_dataloader())
    seconds = time.perf_counter() - start
    return before, _mask_iou(model, data.datasets["test"]), seconds


def test_unsupervised_mask_matches_the_true_foreground(rendered: CaptureCache, tmp_path: Path, one_thread: None
                                                       ) -> None:
    """Paper §4: α + β separates the actor from the background, learned from frames alone (IoU >= 0.8).

    300 seeded single-thread steps (about a minute on 2 CPU cores); the mesh's own coverage scores ~0.5, since
    hair and neck are not in the template.
    """
    before, after, seconds = _fit_and_score(rendered, tmp_path, steps=300)
    print(f"mask IoU {before:.3f} -> {after:.3f} after 300 steps in {seconds:.0f} s")
    assert before < 0.5 and after >= 0.8, f"mask IoU {before:.3f} -> {after:.3f}"


# ---------------------------------------------------------------------------------------------- the CLI
def test_fit_and_test_through_the_cli(rendered: CaptureCache, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    base = ["--config", str(REPO_ROOT / "experiments" / "rerender.yaml"),
            "--config", str(REPO_ROOT / "experiments" / "rerender_tiny.yaml"),
            f"--data.init_args.cache_dir={rendered.root}", f"--trainer.default_root_dir={runs}",
            f"--trainer.logger.init_args.save_dir={runs}", "--trainer.enable_progress_bar=false"]
    assert main(["fit", *base, "--trainer.max_steps=4", "--trainer.val_check_interval=4",
                 "--trainer.limit_val_batches=2"]) == 0
    grids = list(runs.rglob("images/val_rerender/step_*.png"))
    assert grids, "no re-render grid was written"
    metrics = next(runs.rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert {"val/psnr", "val/ssim", "val/mask_iou", "val/l1"} <= set(metrics)
    last = next(runs.rglob("last.ckpt"))
    assert main(["test", *base, "--trainer.limit_test_batches=2", f"--ckpt_path={last}"]) == 0
