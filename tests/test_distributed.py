"""Lightning DDP on CPU (gloo, two processes, launched as a user launches them) against one process.

Every trained model: the animator's held-out scores cover every test sequence once and equal one process scoring
the same checkpoint; the head VAE (two optimisers, a discriminator idle before ``adversarial_start``) and the
re-render U-Net with its PatchGAN train as one process trains on the same samples; a DDP fit stopped part-way
into an epoch resumes under DDP and on one process; the scores a DDP fit logs are those of its checkpoint.

Why weights can agree to float rounding: a DDP step of ``B`` samples per process takes its samples from one
shuffled order (rank r of W takes the order's entries r, r + W, ...; ``datamodules.windows``), so the two
processes' step k together see the samples one process sees in its step k at batch ``2B``, and DDP averages the
two gradients, which is the gradient of the mean loss over ``2B``. That holds where every loss term is a mean of
per-sample terms: the U-Net normalises per sample (GroupNorm; InstanceNorm in the discriminator) and has no
noise. The head VAE's ``sample_latent`` is off (its noise draws cannot be the same) and its BatchNorm sees each
process's own ``B`` samples (SyncBatchNorm, which would pool them, runs on GPUs only), so its one-process
reference normalises each process's half of the batch separately (:class:`TwoDeviceHeadVAE`), which is what
DDP computes. Biases that a normalisation cancels are left out of every comparison (:func:`_cancelled_biases`).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from avatar_lightning.cache import CaptureCache, SequenceRecord
from avatar_lightning.checkpoints import load_model
from avatar_lightning.cli import main as cli_main
from avatar_lightning.models.head_vae import HeadVAE
from avatar_lightning.models.rerender import Rerenderer
from avatar_lightning.testing import make_expression_cache, tiny_camera
from datamodules.windows import ResumableShuffle
from tests.helpers import REPO_ROOT

EXPERIMENTS = REPO_ROOT / "experiments"
DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
ONE = ["--trainer.accelerator=cpu", "--trainer.devices=1"]
# Adam at lr 2e-3 moves a weight by up to 2e-3 a step; float32 sums in another order (a gloo all-reduce of two
# half-batch gradients against one full-batch sum) differ by ~1e-7 relative, which a few steps keep below 1e-5.
WEIGHT_ATOL = 2e-5


def _fit_ddp(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "avatar_lightning", *args, *DDP], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]


def _last(run: Path) -> Path:
    return run / "checkpoints" / "last.ckpt"


def _weights(run: Path) -> dict[str, Tensor]:
    return torch.load(_last(run), map_location="cpu", weights_only=True)["state_dict"]


def _cancelled_biases(module: torch.nn.Module) -> set[str]:
    """Biases of convolutions followed by BatchNorm or InstanceNorm: the norm subtracts them again.

    Their true gradient is exactly zero, the float one rounding noise; Adam divides each gradient by its own
    running RMS, so such a bias moves by up to ``lr`` a step in a direction that rounding decides, differently in
    any two runs that sum in another order. What the network computes in training does not depend on them.
    """
    norms = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.InstanceNorm2d)
    names = set()
    for prefix, sequence in module.named_modules():
        if isinstance(sequence, torch.nn.Sequential):
            children = list(sequence.named_children())
            for (index, layer), (_, following) in zip(children, children[1:], strict=False):
                if isinstance(layer, torch.nn.Conv2d) and layer.bias is not None and isinstance(following, norms):
                    names.add(f"{prefix}.{index}.bias")
    return names


def _largest_difference(a: dict[str, Tensor], b: dict[str, Tensor], skip: set[str]) -> tuple[float, str]:
    """The largest difference of the parameters in both (buffers and ``skip`` left out), and its name."""
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs().max().item(), k) for k in a
               if k not in skip and a[k].is_floating_point() and "running_" not in k)


def _elements_beyond(a: dict[str, Tensor], b: dict[str, Tensor], skip: set[str], atol: float) -> list[str]:
    """``name[i]: difference`` of each parameter element over ``atol`` apart (as in :func:`_largest_difference`)."""
    found = []
    for k in a:
        if k not in skip and a[k].is_floating_point() and "running_" not in k:
            difference = (a[k].double() - b[k].double()).abs().flatten()
            found += [f"{k}[{i}]: {difference[i]:.3g}" for i in torch.nonzero(difference > atol).flatten().tolist()]
    return found


def _assert_trained_alike(ddp: Path, one: Path, control: Path, skip: set[str], atol: float,
                          stray: int = 2) -> None:
    """DDP's weights within ``atol`` of one process's; the control run (other samples per step) far outside.

    Up to ``stray`` single elements (of some 10^5) may lie beyond ``atol``, never beyond ``5 * atol``: Adam divides
    each gradient by its own running RMS, so a weight whose gradient is nearly zero moves by an amount that the
    order of summation decides (seen: one discriminator weight in 131,072 at 2.4e-4 once the head VAE starts from
    the mean texture). A wrong gradient average or a wrong batch moves thousands of elements, not two.
    """
    a, b = _weights(ddp), _weights(one)
    beyond = _elements_beyond(a, b, skip, atol)
    difference, where = _largest_difference(a, b, skip)
    assert len(beyond) <= stray and difference <= 5 * atol, (
        f"DDP against one process: {len(beyond)} elements beyond {atol:g}, up to {difference:.3g} (at {where}): "
        f"{beyond[:5]}")
    apart, where = _largest_difference(_weights(ddp), _weights(control), skip)
    assert apart > 50 * atol, f"the control is only {apart:.3g} away (at {where}): the check cannot tell"


def _validation_scores(run: Path) -> dict[str, float]:
    with open(run / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/psnr")]
    return {key: float(value) for key, value in rows[-1].items() if key.startswith("val/") and value}


def _assert_validation_synced(args: list[str], ddp: Path) -> None:
    """The scores the DDP fit logged (each process validated half the frames) equal one process validating all."""
    again = ddp.parent / "validate"
    swap = {"--trainer.logger.init_args.version=ddp": f"--trainer.logger.init_args.version={again.name}"}
    assert cli_main(["validate", *[swap.get(a, a) for a in args[1:]], *ONE, f"--ckpt_path={_last(ddp)}"]) == 0
    scores, single = _validation_scores(ddp), _validation_scores(again)
    assert "val/psnr" in scores and scores.keys() == single.keys()
    assert scores == {k: pytest.approx(v, rel=1e-5, abs=1e-7) for k, v in single.items()}


# ---------------------------------------------------------------------------------------------- animator
def _animator_args(command: str, cache: Path, runs: Path) -> list[str]:
    return [command, "--config", str(EXPERIMENTS / "animator.yaml"), "--config",
            str(EXPERIMENTS / "animator_tiny.yaml"), "--model.init_args.features=expression",
            f"--data.init_args.cache_dir={cache}",
            f"--trainer.default_root_dir={runs}", f"--trainer.logger.init_args.save_dir={runs}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def test_a_ddp_fit_scores_every_test_sequence_once(tmp_path: Path) -> None:
    cache, _ = make_expression_cache(tmp_path / "cache", test_sequences=3)
    runs = tmp_path / "runs"
    _fit_ddp([*_animator_args("fit", cache.root, runs), "--trainer.max_steps=40"])
    run = runs / "expression" / "lstm_residual0"
    distributed = json.loads((run / "scores.json").read_text())
    assert sorted(s["name"] for s in distributed["sequences"]) == ["test", "test_1", "test_2"]
    assert distributed["frames"] == 60 and distributed["model"]["steps"] == 40

    checkpoint = run / "checkpoints" / "last.ckpt"
    (run / "scores.json").rename(run / "scores_ddp.json")
    assert cli_main([*_animator_args("test", cache.root, runs), "--trainer.devices=1",
                     f"--ckpt_path={checkpoint}"]) == 0
    single = json.loads(next(runs.rglob("scores.json")).read_text())
    assert single["metrics"]["latent_mse"] is not None
    for name, value in single["metrics"].items():  # blend_mse is None in both: this cache has no blend weights
        assert distributed["metrics"][name] == (value if value is None else pytest.approx(value, rel=1e-5, abs=1e-9))


# ---------------------------------------------------------------------------------------------- small caches
TRAIN, VAL = 16, 8  # frames: 16 = 2 batches of 8 per epoch (one process) or of 4 per process (two processes)


def _sequences() -> list[SequenceRecord]:
    return [SequenceRecord("train", 0, TRAIN - 1, "train"), SequenceRecord("val", TRAIN, TRAIN + VAL - 1, "val")]


def _smooth_images(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """``(count, size, size, 3) uint8``: random colour gradients plus noise, so reconstructions can improve."""
    ramp = np.linspace(0, 1, size)
    a, b, c = (rng.random((count, 1, 1, 3)) for _ in range(3))
    images = a * ramp[None, :, None, None] + b * ramp[None, None, :, None] + 0.3 * c
    images = images + 0.1 * rng.standard_normal((count, size, size, 3))
    return (np.clip(images / 1.6, 0, 1) * 255).round().astype(np.uint8)


def _head_cache(root: Path) -> CaptureCache:
    """Textures 16^2 and 5 blend weights per frame, for the head VAE."""
    rng = np.random.default_rng(0)
    n = TRAIN + VAL
    cache = CaptureCache.create(root, fps=25, num_frames=n, sequences=_sequences())
    cache.write_array("tracking/textures", _smooth_images(rng, n, 16), stage="test", per_frame=True)
    cache.write_array("tracking/blend_weights", rng.random((n, 5)).astype(np.float32), stage="test", per_frame=True)
    return cache


def _render_cache(root: Path) -> CaptureCache:
    """One 16^2 camera with I_orig and coverage in ``renders/fixture``, frames and a clean plate, for the U-Net."""
    rng = np.random.default_rng(1)
    n, size = TRAIN + VAL, 16
    cache = CaptureCache.create(root, fps=25, num_frames=n, sequences=_sequences(),
                                cameras=[tiny_camera("cam", width=size, height=size)])
    coverage = np.zeros((n, size, size), np.uint8)
    coverage[:, 3:13, 4:12] = 255  # the "head"
    frames = _smooth_images(rng, n, size)
    i_orig = np.where(coverage[..., None] > 0, frames // 2 + 40, 0).astype(np.uint8)  # a darker, flat render
    cache.write_array("renders/fixture/cam", i_orig, stage="test", per_frame=True)
    cache.write_array("renders/fixture/cam.mask", coverage, stage="test", per_frame=True)
    cache.write_array("cameras/cam/frames", frames, stage="test", per_frame=True)
    cache.write_array("cameras/cam/clean_plate", _smooth_images(rng, 1, size)[0], stage="test")
    return cache


def _stage_args(stage: str, cache: Path, run: Path, batch_size: int, batches: int, *extra: str) -> list[str]:
    """``fit`` of ``experiments/<stage>.yaml`` + ``<stage>_tiny.yaml`` for ``batches`` batches, validated at the end."""
    steps = 2 * batches  # both models here step two optimisers per batch
    return ["fit", "--config", str(EXPERIMENTS / f"{stage}.yaml"), "--config", str(EXPERIMENTS / f"{stage}_tiny.yaml"),
            f"--data.init_args.cache_dir={cache}", f"--data.init_args.batch_size={batch_size}",
            f"--trainer.default_root_dir={run.parent}", f"--trainer.logger.init_args.save_dir={run.parent}",
            "--trainer.logger.init_args.name=", f"--trainer.logger.init_args.version={run.name}",
            f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={batches}",
            "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", *extra]


# ---------------------------------------------------------------------------------------------- head VAE
class TwoDeviceHeadVAE(HeadVAE):
    """One process computing what DDP computes on two: BatchNorm statistics per process's half of the batch.

    Under DDP rank r's batch is the entries ``r::2`` of one process's batch of ``2B`` (the shuffled order is dealt
    out in turn); each rank's BatchNorm normalises its own ``B`` samples and DDP keeps rank 0's running
    statistics (it broadcasts them before every forward). Here the VAE's forward runs each half on its own,
    interleaves the outputs back and keeps the statistics of half 0; every loss term is a mean over samples, so
    the mean over ``2B`` equals the mean of the two halves' means, as DDP's averaged gradient.
    """

    def _build(self, texture_size: int, num_blend_shapes: int) -> None:
        super()._build(texture_size, num_blend_shapes)
        vae, forward = self.vae, self.vae.forward
        statistics = [m for m in vae.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

        def per_half(_: object, texture: Tensor, blend: Tensor, sample: bool | None = None) -> tuple[Tensor, ...]:
            first = forward(texture[0::2], blend[0::2], sample)
            kept = [(s.running_mean, s.running_var, s.num_batches_tracked) for s in statistics]  # half 0's
            for s in statistics:  # half 1 updates copies (autograd saved the originals: no in-place change)
                s.running_mean, s.running_var = s.running_mean.clone(), s.running_var.clone()
                s.num_batches_tracked = s.num_batches_tracked.clone()
            second = forward(texture[1::2], blend[1::2], sample)
            for s, (mean, var, count) in zip(statistics, kept, strict=True):
                s.running_mean, s.running_var, s.num_batches_tracked = mean, var, count
            out = []
            for a, b in zip(first, second, strict=True):
                both = torch.empty((len(a) + len(b), *a.shape[1:]), dtype=a.dtype, device=a.device)
                both[0::2], both[1::2] = a, b
                out.append(both)
            return tuple(out)

        vae.forward = types.MethodType(per_half, vae)


def test_head_vae_under_ddp_trains_as_one_process(tmp_path: Path) -> None:
    """Two processes x 4 frames train what one process computing the same thing trains from 8 frames a step.

    Three batches: one with the discriminator idle (``adversarial_start`` 1), two with both networks learning,
    across an epoch boundary. Against :class:`TwoDeviceHeadVAE`: the network in training mode (the function each
    step optimises) gives the same outputs to 1e-5, and every parameter but the cancelled biases
    (:func:`_cancelled_biases`) agrees to 1e-4, a twentieth of one Adam step at lr 2e-3 (Adam also magnifies
    rounding in the few weights whose gradient is nearly zero: 5e-5 is seen). The control, plain one-process
    BatchNorm over all 8 frames (an honest but different computation), lands far outside both.
    """
    cache = _head_cache(tmp_path / "cache").root
    runs = tmp_path / "runs"
    model = ["--model.init_args.sample_latent=false", "--model.init_args.adversarial_start=1",
             "--model.init_args.kl_warmup_steps=4"]
    ddp_args = _stage_args("head_vae", cache, runs / "ddp", 4, 3, *model)
    _fit_ddp(ddp_args)
    reference = f"--model.class_path={TwoDeviceHeadVAE.__module__}.{TwoDeviceHeadVAE.__qualname__}"
    assert cli_main([*_stage_args("head_vae", cache, runs / "one", 8, 3, *model, reference), *ONE]) == 0
    assert cli_main([*_stage_args("head_vae", cache, runs / "pooled", 8, 3, *model), *ONE]) == 0

    trained = {}  # one class for all three: the reference's halving forward is not part of what it trained
    for name in ("ddp", "one", "pooled"):
        trained[name] = load_model(HeadVAE, _last(runs / "ddp"))
        trained[name].load_state_dict(_weights(runs / name))
        trained[name].train()
    assert int(trained["ddp"].generator_steps) == 3
    _assert_trained_alike(runs / "ddp", runs / "one", runs / "pooled", _cancelled_biases(trained["ddp"]), 1e-4)
    frames = CaptureCache(cache)
    texture = torch.from_numpy(frames.read("tracking/textures")).permute(0, 3, 1, 2).float() / 255
    blend = torch.from_numpy(frames.read("tracking/blend_weights"))
    with torch.no_grad():
        outputs = {name: [*m.vae(texture, blend, sample=False), m.discriminator(texture)]
                   for name, m in trained.items()}
    # the discriminator's scores to 1e-4: they carry the stray weight (2e-4 moves them by 2e-5). The control's blend
    # weights are not expected to differ: with the config's geometry_share they come from the blend weights' own
    # code, a linear map without batch statistics, which every process computes alike. mu to 1e-4: its geometry
    # part is in standardised units (coordinates up to ~10 on the principal axes), so float32 rounding is larger.
    assert trained["ddp"].geometry_dim > 0
    for other, bound in (("one", lambda d, limit: d <= limit), ("pooled", lambda d, limit: limit is None or d > limit)):
        limits = (1e-5, 1e-5, 1e-4, 1e-5, 1e-4) if other == "one" else (1e-2, None, 1e-2, 1e-2, 1e-2)
        differences = [(a - b).abs().max().item() for a, b in zip(outputs["ddp"], outputs[other], strict=True)]
        assert all(map(bound, differences, limits)), (
            f"{other}: outputs (texture, blend, mu, log_var, D) {differences}")
    _assert_validation_synced(ddp_args, runs / "ddp")


# ---------------------------------------------------------------------------------------------- re-render U-Net
RERENDER = ["--data.init_args.run=fixture", "--model.init_args.adversarial_weight=0.1",
            "--model.init_args.adversarial_start=2", "--model.init_args.discriminator_layers=1",
            "--model.init_args.discriminator_width=8"]


@pytest.fixture(scope="module")
def stopped_ddp_fit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A DDP fit of the U-Net (2 x 4 images) stopped after one batch, part-way into its first epoch: the cache
    and the run folder, which tests copy before resuming it. Read-only."""
    root = tmp_path_factory.mktemp("stopped")
    cache = _render_cache(root / "cache").root
    _fit_ddp(_stage_args("rerender", cache, root / "runs" / "ddp", 4, 1, *RERENDER))
    return cache, root / "runs" / "ddp"


def _resume(stopped: Path, runs: Path) -> Path:
    """The last.ckpt of a copy of the stopped run in ``runs``: resuming it leaves the fixture as it was."""
    shutil.copytree(stopped, runs / stopped.name)
    return _last(runs / stopped.name)


def test_rerender_under_ddp_trains_the_weights_of_one_process(stopped_ddp_fit: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    """Two processes x 4 images == one process x 8 images, weights to 2e-5, PatchGAN on, resumed under DDP.

    GroupNorm (U-Net) and InstanceNorm (discriminator) normalise per sample and nothing is random, so the weights
    themselves agree (all but the discriminator's cancelled biases, :func:`_cancelled_biases`). The DDP fit,
    stopped after one batch part-way into its first epoch, is resumed under DDP to four batches (two with the
    discriminator idle, two adversarial ones, two epochs). The control, one process at the per-process batch of
    4 (what each process would train alone, were gradients not averaged), lands far outside the tolerance.
    """
    cache, stopped = stopped_ddp_fit
    runs = tmp_path / "runs"
    checkpoint = _resume(stopped, runs)
    ddp_args = _stage_args("rerender", cache, runs / "ddp", 4, 4, *RERENDER)
    _fit_ddp([*ddp_args, f"--ckpt_path={checkpoint}"])
    assert cli_main([*_stage_args("rerender", cache, runs / "one", 8, 4, *RERENDER), *ONE]) == 0
    assert cli_main([*_stage_args("rerender", cache, runs / "alone", 4, 4, *RERENDER), *ONE]) == 0

    ddp = load_model(Rerenderer, _last(runs / "ddp"))
    assert int(ddp.generator_steps) == 4
    _assert_trained_alike(runs / "ddp", runs / "one", runs / "alone", _cancelled_biases(ddp), WEIGHT_ATOL)
    _assert_validation_synced(ddp_args, runs / "ddp")


def test_a_ddp_checkpoint_resumes_on_one_process(stopped_ddp_fit: tuple[Path, Path], tmp_path: Path) -> None:
    """The stopped DDP fit (2 x 4 images), resumed by one process at 8 (the same samples a step), ends where one
    process training from the start ends: weights, both Adam states, step counters."""
    cache, stopped = stopped_ddp_fit
    runs = tmp_path / "runs"
    checkpoint = _resume(stopped, runs)
    assert cli_main([*_stage_args("rerender", cache, runs / "ddp", 8, 3, *RERENDER), *ONE,
                     f"--ckpt_path={checkpoint}"]) == 0
    assert cli_main([*_stage_args("rerender", cache, runs / "one", 8, 3, *RERENDER), *ONE]) == 0

    resumed, one = (torch.load(_last(runs / n), map_location="cpu", weights_only=True) for n in ("ddp", "one"))
    assert resumed["global_step"] == one["global_step"] == 6
    skip = _cancelled_biases(load_model(Rerenderer, _last(runs / "one")))
    difference, where = _largest_difference(resumed["state_dict"], one["state_dict"], skip)
    assert difference <= WEIGHT_ATOL, f"weights differ by up to {difference:.3g} (at {where})"
    for a, b in zip(resumed["optimizer_states"], one["optimizer_states"], strict=True):
        assert a["state"].keys() == b["state"].keys()
        for key, state in a["state"].items():
            assert state["step"] == b["state"][key]["step"]
            torch.testing.assert_close(state["exp_avg"], b["state"][key]["exp_avg"], atol=1e-5, rtol=1e-3)


# ---------------------------------------------------------------------------------------------- data order
@pytest.mark.parametrize("batches", [False, True], ids=["samples", "batches"])
@pytest.mark.parametrize("size", [16, 19])
def test_processes_deal_out_one_order_and_resume_in_it(size: int, batches: bool) -> None:
    """W processes at B a step take, step by step, the samples one process takes at W·B (every full step; the
    last is padded from the start so every process has as many batches); a fit stopped after a step resumes
    where it stopped with any number of processes; at another batch size it takes what the stopped run did not."""

    def steps(world: int, batch: int, resume: int | None = None) -> list[list[int]]:
        """Each step's samples over all processes, in epoch 3; ``resume``: after a first step of that many."""
        streams = []
        for rank in range(world):
            sampler = ResumableShuffle(size, 7, batch, world, rank, batches)
            sampler.set_epoch(3)
            if resume:
                sampler.resume_at(3, 1)
                sampler.resumed_from(resume)
            flat = [i for unit in sampler for i in (unit if batches else [unit])]
            streams.append([flat[i:i + batch] for i in range(0, len(flat), batch)])
            assert len(streams[-1]) <= -(-len(sampler) // (1 if batches else batch))  # Lightning's batch count
        assert len({len(s) for s in streams}) == 1  # as many batches on every process
        return [sorted(sum((s[k] for s in streams), [])) for k in range(len(streams[0]))]

    one, full = steps(1, 8), size // 8
    assert sorted(sum(one, [])) == list(range(size))
    assert steps(2, 4)[:full] == steps(4, 2)[:full] == one[:full]
    assert steps(2, 4, resume=8)[:full - 1] == steps(1, 8, resume=8)[:full - 1] == one[1:full]
    assert sorted(sum(steps(1, 4, resume=8), [])) == sorted(sum(one[1:], []))
