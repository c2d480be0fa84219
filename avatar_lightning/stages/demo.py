"""``python -m avatar_lightning demo``: the whole chain on the built-in synthetic actor, in minutes on a CPU.

synth actor -> features (``--features``, default mediapipe, made ``--relative``) -> head VAE (time budget) -> encode
-> render-mesh -> re-render U-Net (time budget) -> the animator grid over those features (3 backbones x residual
on/off, a shortened schedule) -> evaluate (validation chooses the cell; the test sequence scored in latents, blend
shapes and rendered images; cross-identity on the standard synthetic drivers; with ``--drivers`` every cell's
transfer on real videos) -> export the chosen cell's avatar -> synth another identity's driving video -> animate it
(side by side) and score its transfer (and each ``--drivers`` video's, animated too). Every step runs the same code
as its own command (Lightning fits go through the CLI with the experiment files); the shortened budgets are the only
demo-specific settings and are printed in the report. A report folder collects the tables, plots, image grids, the
video and the step timings.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from avatar_lightning.cache.layout import feature_array
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.errors import CacheError
from avatar_lightning.features.extract import RELATIVE_CHOICES

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
# Offline everywhere; DECA needs the user's weights.
FEATURE_CHOICES = ("mediapipe", "mediapipe_blendshapes", "tracked_blend")
# A real capture's frames are prepared with their longer side at this size: the self-reenactment goals are set at
# 256^2, and the re-render U-Net, the renderings and the scores cost a quarter of what 512^2 would, so the demo's
# budget buys four times the training steps. A user with hours (or a GPU) prepares at full size (README).
CAPTURE_SIZE = 256
# Training budgets in minutes (head VAE, re-render U-Net): the synthetic actor's, and a real capture's, which needs
# many more steps to learn a real face (demo --capture stays within 30 minutes on a 2-core CPU).
SYNTHETIC_MINUTES, CAPTURE_MINUTES = (2.5, 2.0), (8.0, 8.0)


def grid(features: str) -> list[str]:
    """The animator cells the demo trains: 3 backbones x residual off/on, over one feature variant."""
    return [f"{backbone}_{features}{suffix}" for suffix in ("", "_residual") for backbone in ("mlp", "cnn", "lstm")]


def _fit(args: list[str], summary: bool = False) -> None:
    """``fit`` in this process; Lightning's run summary (devices, seed) only with ``summary`` (the demo's first fit:
    the eight fits after it would repeat the same three lines)."""
    from avatar_lightning.cli import main as cli_main
    from avatar_lightning.quiet import lightning_run_summary_hidden

    with contextlib.nullcontext() if summary else lightning_run_summary_hidden():
        code = cli_main(["fit", *args])
    if code:
        raise CacheError(f"fit {' '.join(args)} failed with exit code {code}")


def _newest(folder: Path, pattern: str) -> Path:
    found = sorted(folder.rglob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise CacheError(f"no {pattern} under {folder}")
    return found[-1]


def _minutes(value: float) -> str:
    seconds = int(round(value * 60))
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Steps:
    """Runs named steps, printing and recording each one's wall time."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        print(f"\n=== demo: {name}", flush=True)
        start = time.perf_counter()
        result = fn()
        self.timings[name] = time.perf_counter() - start
        print(f"=== demo: {name} done in {self.timings[name]:.0f} s", flush=True)
        return result


def _score_transfer(driving: Path, animation: Any, out: Path) -> Any:
    """score-transfer of an ``animate`` result (the avatar half of its side-by-side video) against its driver."""
    from avatar_lightning.evaluation.transfer_score import score_videos, write_report

    score, driver, avatar = score_videos(str(driving), animation.avatar_spec)
    write_report(score, driver, avatar, out, title=f"{driving.name} -> the exported avatar")
    return score


def _actor(actor_dir: Path, preset: str, capture: Sequence[str], overwrite: bool,
           capture_size: int = CAPTURE_SIZE) -> None:
    """The actor's cache: the synthetic one, or a real capture through ``prepare`` at ``capture_size`` pixels
    (reused when an earlier run prepared the same videos at that size)."""
    if not capture:
        from avatar_lightning.synth.generate import generate

        generate(actor_dir, preset=preset, seed=0, overwrite=overwrite)
        return
    from avatar_lightning.capture.prepare import PrepareOptions, prepare_capture

    if (actor_dir / "manifest.json").exists():
        meta = CaptureCache(actor_dir).manifest.meta
        size = meta.get("prepare", {}).get("frames", {}).get("max_side")
        if meta.get("complete") and meta.get("sources") == list(capture) and size == capture_size and not overwrite:
            return  # this capture was prepared by an earlier run
    prepare_capture(list(capture), actor_dir, PrepareOptions(overwrite=overwrite, max_side=capture_size))


# Test frames rendered per camera and candidate for the image metrics: 20 x 3 cameras x 9 candidates keeps the
# demo's evaluation near a minute on a 2-core CPU (`evaluate` itself defaults to 50).
DEMO_IMAGE_FRAMES = 20


def run_demo(out: Path, preset: str, head_vae_minutes: float, rerender_minutes: float, animator_steps: int,
             identity: int = 1, overwrite: bool = False, capture: Sequence[str] = (),
             features: str = "mediapipe", relative: str = "sequence", drivers: Sequence[str | Path] = (),
             capture_size: int = CAPTURE_SIZE) -> Path:
    """Run the chain into ``out``; returns the report folder. ``capture``: a real actor's videos for ``prepare``."""
    from avatar_lightning.avatar.animate import animate_video
    from avatar_lightning.avatar.folder import export_avatar, load_avatar
    from avatar_lightning.avatar.latents import encode_cache, record_latent_source
    from avatar_lightning.avatar.mesh_renders import render_cache
    from avatar_lightning.evaluation.run import run_evaluation
    from avatar_lightning.evaluation.transfer_score import check_driving_videos, videos_markdown
    from avatar_lightning.features.run import extract_features
    from avatar_lightning.models.head_vae import load_head_vae
    from avatar_lightning.synth.generate import generate

    check_driving_videos(drivers)
    out = out.resolve()
    actor_dir, runs, report = out / "actor", out / "runs", out / "report"
    report.mkdir(parents=True, exist_ok=True)
    step = Steps()
    total_start = time.perf_counter()
    actor_step = f"prepare actor ({len(capture)} camera(s))" if capture else f"synth actor ({preset})"
    step(actor_step, lambda: _actor(actor_dir, preset, capture, overwrite, capture_size))
    actor = CaptureCache(actor_dir)
    recorded = actor.manifest.meta.get("features", {}).get(features, {})
    if not actor.has(feature_array(features)) or recorded.get("relative") != relative:
        step(f"features ({features}, relative {relative})",
             lambda: extract_features(actor_dir, features, relative=relative))
    logged = [f"--data.init_args.cache_dir={actor_dir}", f"--trainer.default_root_dir={runs}",
              f"--trainer.logger.init_args.save_dir={runs}"]
    step("head VAE", lambda: _fit([
        "--config", str(EXPERIMENTS / "head_vae.yaml"), *logged, f"--trainer.max_time={_minutes(head_vae_minutes)}",
        "--trainer.val_check_interval=100", "--trainer.limit_val_batches=4", "--model.init_args.kl_warmup_steps=200",
        "--model.init_args.adversarial_start=300", "--data.init_args.num_workers=0"], summary=True))
    head_vae_ckpt = _newest(runs / "head_vae", "last.ckpt")
    vae = load_head_vae(head_vae_ckpt)

    def encode() -> None:
        encode_cache(vae, actor, "head_vae")
        record_latent_source(actor, "head_vae", head_vae_ckpt, vae)
        render_cache(CaptureCache(actor_dir), "head_vae", "vae", model=vae, device="cpu")

    step("encode + render-mesh", encode)
    step("re-render U-Net", lambda: _fit([
        "--config", str(EXPERIMENTS / "rerender.yaml"), *logged, f"--trainer.max_time={_minutes(rerender_minutes)}",
        "--trainer.val_check_interval=100", "--trainer.limit_val_batches=2", "--data.init_args.num_workers=0",
        "--model.init_args.lr=1e-3"]))
    rerender_ckpt = _newest(runs / "rerender", "last.ckpt")

    grid_runs = runs / "animator"
    for cell in grid(features):  # every core: on an idle machine 2 threads beat 1 (benchmarks/animator.py)
        step(f"animator {cell}", lambda cell=cell: _fit([
            "--config", str(EXPERIMENTS / f"{cell}.yaml"), f"--data.init_args.cache_dir={actor_dir}",
            f"--trainer.default_root_dir={grid_runs}", f"--trainer.logger.init_args.save_dir={grid_runs}",
            f"--trainer.max_steps={animator_steps}", "--trainer.val_check_interval=500",
            f"--model.init_args.lr_decay_every={max(animator_steps // 30, 1)}",
            "--trainer.enable_progress_bar=false"]))
    evaluation = step("evaluate (validation chooses; test, images, synthetic drivers)", lambda: run_evaluation(
        [grid_runs / features], actor_dir, report, rerender=rerender_ckpt, head_vae=head_vae_ckpt,
        image_frames=DEMO_IMAGE_FRAMES, synthetic=preset if not capture else "demo", drivers=drivers,
        work=out / "drivers"))
    best = evaluation.chosen.candidate.run_dir
    avatar_dir = out / "avatar"
    step("export", lambda: export_avatar(actor, avatar_dir, head_vae_ckpt, rerender_ckpt,
                                         best / "checkpoints" / "last.ckpt", overwrite=True))
    driver_dir = out / f"driver_{identity}"
    step(f"synth driver (identity {identity})", lambda: generate(driver_dir, preset=preset, identity=identity, seed=0,
                                                                        overwrite=overwrite))
    driver = CaptureCache(driver_dir)
    video = driver_dir / "previews" / f"{driver.cameras[0].name}.mp4"
    avatar = load_avatar(avatar_dir)
    animation = step("animate (side by side)", lambda: animate_video(
        video, avatar, report / "animation.mp4", work=out / "driving", with_driving=True))
    transfers = {video.name: step("transfer score (synthetic driver)", lambda: _score_transfer(
        video, animation, report / "transfer"))}
    for clip in drivers:
        clip = Path(clip)
        clip_video = report / f"drive_{clip.stem}.mp4"
        driven = step(f"animate {clip.name}", lambda clip=clip, clip_video=clip_video: animate_video(
            clip, avatar, clip_video, work=out / "drivers" / f"animate_{clip.stem}", with_driving=True))
        transfers[clip.name] = step(f"transfer score ({clip.name})", lambda clip=clip, driven=driven: _score_transfer(
            clip, driven, report / f"transfer_{clip.stem}"))
    (report / "transfer.md").write_text(videos_markdown(transfers))
    images = report / "images"
    images.mkdir(exist_ok=True)
    for name, folder in (("head_vae", runs / "head_vae"), ("rerender", runs / "rerender")):
        grids = sorted(folder.rglob("*.png"), key=lambda p: p.stat().st_mtime)
        if grids:
            shutil.copyfile(grids[-1], images / f"{name}_{grids[-1].name}")
    total = time.perf_counter() - total_start
    actor_label = f"real capture {list(capture)} (prepare)" if capture else f"synthetic, preset `{preset}`"
    _write_readme(report, step.timings, total, animation, evaluation, actor_label, head_vae_minutes,
                  rerender_minutes, animator_steps)
    print(f"\ndemo done in {total / 60:.1f} min; report: {report}")
    return report


def _write_readme(report: Path, timings: dict[str, float], total: float, animation: Any, evaluation: Any,
                  actor: str, head_vae_minutes: float, rerender_minutes: float, animator_steps: int) -> None:
    from avatar_lightning.evaluation.evaluate import SELECTION_RULE

    table = (report / "scores.md").read_text() if (report / "scores.md").is_file() else ""
    cross = (report / "cross_identity.md").read_text() if (report / "cross_identity.md").is_file() else ""
    best = evaluation.chosen.candidate.run_dir
    transfer = (report / "transfer.md").read_text()
    grid_transfer = (report / "transfer_grid.md").read_text() if (report / "transfer_grid.md").is_file() else ""
    lines = [
        "# avatar_lightning demo report", "",
        f"Actor: {actor}; shortened budgets: head VAE {head_vae_minutes:g} min, re-render U-Net "
        f"{rerender_minutes:g} min, animator {animator_steps} steps per cell (the paper: 15 000).", "",
        f"Video: `animation.mp4` ({animation.frames} frames, driving video left, avatar right; "
        f"{animation.frames_without_face} frames without a face; {animation.frames_per_second:.1f} frames/s).",
        f"Exported avatar: `{best.parent.name}/{best.name}` ({evaluation.chosen.candidate.label}), chosen as "
        f"{SELECTION_RULE}.", "",
        "## Held-out sequence (the actor's own test sequence; images of the full rendering)", "", table, "",
        *(["## Self-reenactment: where motion is lost", "", evaluation.ladder.markdown(),
           f"Video (real | avatar | reference): `{evaluation.ladder.video.name}`; the person's extreme frames beside "
           f"the avatar's: `{evaluation.ladder.contact_sheet.name}`.", ""]
          if evaluation.ladder is not None and evaluation.ladder.video is not None else []),
        "## Cross-identity (synthetic drivers of known expression)", "", cross, "",
        "## Transfer, measured on the videos", "", transfer, "",
        *(["## Transfer of every grid cell on real drivers", "", grid_transfer, ""] if grid_transfer else []),
        "## Time per step", "", "| step | seconds |", "|---|---|",
        *[f"| {name} | {seconds:.0f} |" for name, seconds in timings.items()],
        f"| **total** | **{total:.0f}** |", "",
    ]
    (report / "README.md").write_text("\n".join(lines))


def main(argv: Sequence[str]) -> int:
    from avatar_lightning.synth.generate import PRESETS

    parser = argparse.ArgumentParser(
        prog="python -m avatar_lightning demo",
        description="Run the whole chain on the built-in synthetic actor and write a report folder.",
    )
    parser.add_argument("--out", default="demo", help="output folder (default demo/)")
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS),
                        help="synthetic preset (default demo: 160^2, 60 s of training)")
    parser.add_argument("--head-vae-minutes", type=float,
                        help=f"head VAE training budget (default {SYNTHETIC_MINUTES[0]:g}; with --capture "
                             f"{CAPTURE_MINUTES[0]:g})")
    parser.add_argument("--rerender-minutes", type=float,
                        help=f"re-render U-Net training budget (default {SYNTHETIC_MINUTES[1]:g}; with --capture "
                             f"{CAPTURE_MINUTES[1]:g})")
    parser.add_argument("--animator-steps", type=int, default=1500, help="steps per grid cell (paper: 15 000)")
    parser.add_argument("--identity", type=int, default=1, help="the synthetic identity that drives the avatar")
    parser.add_argument("--overwrite", action="store_true", help="replace synthetic captures made with other settings")
    parser.add_argument("--features", default="mediapipe", choices=FEATURE_CHOICES,
                        help="the animator grid's feature variant (default mediapipe)")
    parser.add_argument("--relative", choices=RELATIVE_CHOICES,
                        help="how features are made relative to the person's neutral (default: sequence for "
                             "mediapipe landmarks, none for the others, which are relative to a neutral already)")
    parser.add_argument("--drivers", nargs="+", default=[], metavar="VIDEO",
                        help="real driving videos: animate the exported avatar with each and score every grid cell's "
                             "transfer on them (report: transfer.md, transfer_grid.md)")
    parser.add_argument("--capture", nargs="+", default=[], metavar="VIDEO",
                        help="a real actor's synchronised camera videos (PATH or PATH@x,y,w,h, as prepare takes) "
                             "instead of the synthetic actor; the driver stays synthetic (its truth gives the "
                             "cross-identity scores)")
    parser.add_argument("--capture-size", type=int, default=CAPTURE_SIZE, metavar="PIXELS",
                        help="with --capture: prepare the frames with this longer side (default %(default)s)")
    args = parser.parse_args(argv)
    if args.capture_size < 64:
        parser.error(f"--capture-size must be at least 64 pixels, got {args.capture_size}")
    minutes = CAPTURE_MINUTES if args.capture else SYNTHETIC_MINUTES
    run_demo(Path(args.out), args.preset, args.head_vae_minutes or minutes[0], args.rerender_minutes or minutes[1],
             args.animator_steps, args.identity, args.overwrite, args.capture, args.features,
             args.relative or ("sequence" if args.features == "mediapipe" else "none"), args.drivers,
             args.capture_size)
    return 0
