"""The bad-input matrix: every command, every kind of bad input it can be handed, one clear error line.

Each :class:`Case` runs a command as a user types it and asserts the contract the README states: exit code 2,
exactly one ``error:`` line naming what is wrong, no traceback (``--debug`` shows one), and nothing written that
looks complete. A few inputs are awkward rather than bad (4K frames, a variable frame rate, one frame): those
cases assert that the command works. The fast suite runs the matrix in process; the ``slow`` run repeats it as
fresh processes, exactly as a terminal shows it, and ``python -m tests.test_bad_input`` prints the table
(input tried -> message -> exit code) that a release note quotes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatar_lightning.cache import CaptureCache
from tests.features_fixtures import blank, face_image, moving_face_frames, write_timed_video

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO_ROOT / "experiments"

pytestmark = pytest.mark.faults


@dataclass(frozen=True)
class World:
    """What the cases need, made once: bad and awkward videos, an exported avatar, its actor and checkpoints."""

    videos: Path
    avatar: Path

    @property
    def sources(self) -> Path:
        return self.avatar.parent

    def video(self, name: str) -> str:
        return str(self.videos / f"{name}.mp4")

    def checkpoint(self, name: str) -> str:
        return str(self.sources / f"{name}.ckpt")

    def actor(self, tmp: Path, breakage: str | None = None) -> Path:
        """A private copy of the actor's cache (with latents/head_vae), broken as ``breakage`` says."""
        root = tmp / "actor"
        shutil.copytree(self.sources / "actor", root)
        if breakage is not None:
            BREAKAGES[breakage](root)
        return root


UHD_FRAMES = 12  # enough for prepare's smallest split


def make_videos(folder: Path) -> Path:
    """The video inputs of the matrix, small enough to make in seconds."""
    from avatar_lightning.video import write_video

    folder.mkdir(parents=True, exist_ok=True)
    good = write_video(folder / "face.mp4", moving_face_frames(16, size=128), fps=25.0)
    write_video(folder / "face_longer.mp4", moving_face_frames(24, size=128), fps=25.0)
    (folder / "empty.mp4").write_bytes(b"")
    data = good.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "text.mp4").write_text("a text file renamed .mp4\n" * 40)
    ok, png = cv2.imencode(".png", face_image(96))
    (folder / "still.mp4").write_bytes(png.tobytes())
    write_video(folder / "no_face.mp4", np.stack([blank(128, 60 + 4 * i) for i in range(16)]), fps=25.0)
    write_video(folder / "one_frame.mp4", moving_face_frames(1, size=128), fps=25.0)
    uhd = np.full((UHD_FRAMES, 2160, 3840, 3), 90, np.uint8)
    uhd[:, 480:1680, 1320:2520] = moving_face_frames(UHD_FRAMES, size=1200)
    write_video(folder / "uhd.mp4", uhd, fps=25.0)
    times = [20 * j for j in range(10)] + [200 + 100 * j for j in range(10)]  # 50 fps, then 10 fps
    write_timed_video(folder / "vfr.mp4", moving_face_frames(20, size=128), times)
    return folder


def make_world(folder: Path, avatar: Path | None = None) -> World:
    """Videos, and (unless given) an avatar of the tiny synthetic actor; the actor gets latents/head_vae."""
    from avatar_lightning.avatar.latents import encode_cache
    from avatar_lightning.models.head_vae import load_head_vae

    if avatar is None:
        from avatar_lightning.synth.generate import generate
        from avatar_lightning.testing import make_avatar

        synthetic = generate(folder / "synthetic", preset="tiny", seed=0, previews=False)
        avatar = make_avatar(folder / "sources", synthetic.root)
    else:  # a shared, read-only fixture: the cases get their own copy
        shutil.copytree(avatar.parent, folder / "sources")
        avatar = folder / "sources" / avatar.name
    actor = CaptureCache(avatar.parent / "actor")
    encode_cache(load_head_vae(avatar.parent / "vae.ckpt"), actor, "head_vae")
    return World(make_videos(folder / "videos"), avatar)


# ---------------------------------------------------------------------------------------------- broken caches
def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def _array_file(root: Path, name: str) -> Path:
    return root / _manifest(root)["arrays"][name]["file"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _poison(root: Path, name: str, value: float) -> None:
    array = np.load(_array_file(root, name), mmap_mode="r+")  # in place: the header stays as the manifest says
    array[3, 0] = value
    array.flush()


BREAKAGES: dict[str, Callable[[Path], None]] = {
    "manifest.json not JSON": lambda root: (root / "manifest.json").write_text("{not json"),
    "manifest.json of a newer schema": lambda root: (root / "manifest.json").write_text(
        json.dumps({**_manifest(root), "schema_version": 99})),
    "blend weights listed, file missing": lambda root: _array_file(root, "tracking/blend_weights").unlink(),
    "blend weights .npy truncated": lambda root: _truncate(_array_file(root, "tracking/blend_weights")),
    "NaN in blend weights": lambda root: _poison(root, "tracking/blend_weights", np.nan),
    "Inf in pose": lambda root: _poison(root, "tracking/pose", np.inf),
    "frames .npy truncated": lambda root: _truncate(_array_file(root, "cameras/frontal/frames")),
    "frames listed, file missing": lambda root: _array_file(root, "cameras/frontal/frames").unlink(),
    "features of the wrong size (20, not 1434)": lambda root: CaptureCache(root).write_array(
        "features/mediapipe", np.zeros((CaptureCache(root).num_frames, 20), np.float32), stage="test",
        per_frame=True),
}


def _run_with(tmp: Path, checkpoint: str) -> str:
    """A run folder (``checkpoints/last.ckpt``) holding ``checkpoint``."""
    run = tmp / "runs" / "cell"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, run / "checkpoints" / "last.ckpt")
    return str(tmp / "runs")


def _ingested(world: World, tmp: Path) -> str:
    from avatar_lightning.capture.ingest import ingest_video

    ingest_video(world.video("face"), tmp / "ingested", overwrite=True)
    return str(tmp / "ingested")


# ---------------------------------------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Case:
    """``argv(world, tmp)`` fails with exit ``code`` and one error line holding ``message`` (``code`` 0: works);
    afterwards none of ``leaves_none`` (globs under ``tmp``) exists."""

    command: str
    bad: str
    argv: Callable[[World, Path], list[str]]
    message: str
    code: int = 2
    leaves_none: tuple[str, ...] = ("out", ".out*")
    check: Callable[[Path], None] | None = field(default=None, compare=False)

    @property
    def id(self) -> str:
        return f"{self.command}: {self.bad}"


def _fit_head_vae(cache: Path, tmp: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(EXPERIMENTS / "head_vae.yaml"), "--config", str(EXPERIMENTS / "head_vae_tiny.yaml"),
            f"--data.init_args.cache_dir={cache}", f"--trainer.default_root_dir={tmp / 'out'}",
            f"--trainer.logger.init_args.save_dir={tmp / 'out'}", "--trainer.max_steps=2", *extra]


def _animator(command: str, cache: Path, tmp: Path, *extra: str) -> list[str]:
    return [command, "--config", str(EXPERIMENTS / "lstm_mediapipe.yaml"), f"--data.init_args.cache_dir={cache}",
            f"--trainer.default_root_dir={tmp / 'out'}", f"--trainer.logger.init_args.save_dir={tmp / 'out'}",
            "--trainer.max_steps=2", "--trainer.enable_progress_bar=false", *extra]


def _export(w: World, tmp: Path, cache: Path | None = None, **swap: str) -> list[str]:
    pieces = {"head-vae": w.checkpoint("vae"), "rerender": w.checkpoint("rerender"),
              "animator": w.checkpoint("animator"), **swap}
    return ["export", "--cache", str(cache or w.sources / "actor"), "--out", str(tmp / "out"),
            *(arg for key, value in pieces.items() for arg in (f"--{key}", value))]


def _avatar_without(w: World, tmp: Path, piece: str) -> str:
    folder = tmp / "avatar"
    shutil.copytree(w.avatar, folder)
    target = folder / piece
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    return str(folder)


def _avatar_with(w: World, tmp: Path, piece: str, replacement: str) -> str:
    folder = tmp / "avatar"
    shutil.copytree(w.avatar, folder)
    shutil.copyfile(replacement, folder / piece)
    return str(folder)


def _truncated_checkpoint(w: World, tmp: Path) -> str:
    path = tmp / "truncated.ckpt"
    path.write_bytes(Path(w.checkpoint("vae")).read_bytes()[:4000])
    return str(path)


def _without_class_path(w: World, tmp: Path, name: str) -> str:
    """``name``'s checkpoint as a script outside LightningCLI saves it: no ``_class_path`` in its hparams."""
    import torch

    checkpoint = torch.load(w.checkpoint(name), weights_only=True)
    checkpoint["hyper_parameters"].pop("_class_path")
    torch.save(checkpoint, tmp / f"{name}_plain.ckpt")
    return str(tmp / f"{name}_plain.ckpt")


def _frames_of(path: Path, frames: int | None, size: tuple[int, int] | None = None) -> None:
    """``path`` is a whole video of ``frames`` frames (any number, if None)."""
    from avatar_lightning.video import probe_video, scan_video

    delivered = scan_video(path).delivered
    assert delivered == frames if frames is not None else delivered > 0
    if size is not None:
        info = probe_video(path)
        assert (info.width, info.height) == size


VIDEO_MESSAGES = {
    "missing": "does not exist",
    "empty": "is empty (0 bytes)",
    "truncated": "is not a readable video",
    "text": "is not a readable video",
    "still": "is a still image (png), not a video",
}
VIDEO_LABELS = {
    "missing": "missing file", "empty": "empty file (0 bytes)", "truncated": "mp4 cut in half",
    "text": "text file renamed .mp4", "still": "PNG renamed .mp4", "no_face": "video without a face",
    "one_frame": "one frame", "uhd": "4K frames (3840x2160)", "vfr": "variable frame rate (50 then 10 fps)",
}


def _video_cases() -> list[Case]:
    cases = []
    score_message = {**VIDEO_MESSAGES, "missing": "no such video file"}
    for name, message in VIDEO_MESSAGES.items():
        label = VIDEO_LABELS[name]
        cases += [
            Case("ingest", label, lambda w, t, n=name: ["ingest", "--video", w.video(n), "--out", str(t / "out")],
                 message),
            Case("prepare", label, lambda w, t, n=name: ["prepare", "--video", w.video(n), "--out", str(t / "out")],
                 message),
            Case("animate", label, lambda w, t, n=name: ["animate", "--driving", w.video(n), "--avatar", str(w.avatar),
                                                         "--out", str(t / "out.mp4"), "--no-progress"], message,
                 leaves_none=("out.mp4", ".out*")),
            Case("score-transfer", f"--driving: {label}",
                 lambda w, t, n=name: ["score-transfer", "--driving", w.video(n), "--avatar-video", w.video("face"),
                                       "--out", str(t / "out"), "--no-progress"], score_message[name],
                 leaves_none=("out.json", "out.png")),
            Case("score-transfer", f"--avatar-video: {label}",
                 lambda w, t, n=name: ["score-transfer", "--driving", w.video("face"), "--avatar-video", w.video(n),
                                       "--out", str(t / "out"), "--no-progress"], score_message[name],
                 leaves_none=("out.json", "out.png")),
            Case("demo", f"--drivers: {label}",
                 lambda w, t, n=name: ["demo", "--out", str(t / "out"), "--preset", "tiny", "--drivers", w.video(n)],
                 message),
        ]
    cases += [
        Case("demo", f"--capture: {VIDEO_LABELS['text']}",
             lambda w, t: ["demo", "--out", str(t / "out"), "--preset", "tiny", "--capture", w.video("text")],
             VIDEO_MESSAGES["text"], leaves_none=("out/actor", "out/runs", ".out*")),
        # a video that opens but cannot serve the command
        Case("prepare", VIDEO_LABELS["no_face"],
             lambda w, t: ["prepare", "--video", w.video("no_face"), "--out", str(t / "out")],
             "found no face in any of its 16 frames"),
        Case("prepare", VIDEO_LABELS["one_frame"],
             lambda w, t: ["prepare", "--video", w.video("one_frame"), "--out", str(t / "out")],
             "the capture has 1 frame (0.04 s at 25 fps); an actor needs at least 10"),
        Case("animate", VIDEO_LABELS["no_face"],
             lambda w, t: ["animate", "--driving", w.video("no_face"), "--avatar", str(w.avatar),
                           "--out", str(t / "out.mp4"), "--no-progress"],
             "no face was found in any of the 16 frames", leaves_none=("out.mp4", ".out*")),
        Case("score-transfer", f"--driving: {VIDEO_LABELS['no_face']}",
             lambda w, t: ["score-transfer", "--driving", w.video("no_face"), "--avatar-video", w.video("face"),
                           "--out", str(t / "out"), "--no-progress"], "found no face in any of its 16 frames",
             leaves_none=("out.json",)),
        Case("score-transfer", f"--driving: {VIDEO_LABELS['one_frame']}",
             lambda w, t: ["score-transfer", "--driving", w.video("one_frame"), "--avatar-video", w.video("one_frame"),
                           "--out", str(t / "out"), "--no-progress"], "a correlation needs at least 8",
             leaves_none=("out.json",)),
        Case("score-transfer", "--avatar-video of another length",
             lambda w, t: ["score-transfer", "--driving", w.video("face"), "--avatar-video", w.video("face_longer"),
                           "--out", str(t / "out"), "--no-progress"], "has 24 frames but",
             leaves_none=("out.json",)),
        Case("demo", f"--drivers: {VIDEO_LABELS['no_face']}",
             lambda w, t: ["demo", "--out", str(t / "out"), "--preset", "tiny", "--drivers", w.video("no_face")],
             "FaceMesh found no face in 8 frames"),
        Case("demo", f"--drivers: {VIDEO_LABELS['one_frame']}",
             lambda w, t: ["demo", "--out", str(t / "out"), "--preset", "tiny", "--drivers", w.video("one_frame")],
             "has 1 frame(s)"),
        # awkward, not bad: these must work
        Case("ingest", VIDEO_LABELS["uhd"],
             lambda w, t: ["ingest", "--video", w.video("uhd"), "--out", str(t / "c"), "--size", "1024"], "", code=0,
             leaves_none=(".c*",), check=lambda t: _assert_frames(CaptureCache(t / "c"), UHD_FRAMES, (576, 1024))),
        Case("prepare", VIDEO_LABELS["uhd"], lambda w, t: ["prepare", "--video", w.video("uhd"), "--out", str(t / "c")],
             "", code=0, leaves_none=(".c*",), check=lambda t: _assert_prepared_at(CaptureCache(t / "c"), (576, 1024))),
        Case("ingest", VIDEO_LABELS["vfr"], lambda w, t: ["ingest", "--video", w.video("vfr"), "--out", str(t / "c")],
             "", code=0, leaves_none=(".c*",),
             check=lambda t: CaptureCache(t / "c").manifest.meta["ingest"]["frame_rate"]["variable"] or _fail()),
        Case("ingest", VIDEO_LABELS["one_frame"],
             lambda w, t: ["ingest", "--video", w.video("one_frame"), "--out", str(t / "c")], "", code=0,
             leaves_none=(".c*",), check=lambda t: _assert_frames(CaptureCache(t / "c"), 1, (128, 128))),
    ]
    for name, frames in (("uhd", UHD_FRAMES), ("vfr", None), ("one_frame", 1)):
        cases.append(Case(
            "animate", VIDEO_LABELS[name],
            lambda w, t, n=name: ["animate", "--driving", w.video(n), "--avatar", str(w.avatar), "--out",
                                  str(t / "avatar.mp4"), "--no-progress"], "", code=0, leaves_none=(".avatar*",),
            check=lambda t, f=frames: _frames_of(t / "avatar.mp4", f)))
    return cases


def _assert_frames(cache: CaptureCache, frames: int, size: tuple[int, int]) -> None:
    assert tuple(cache.record(f"cameras/{cache.cameras[0].name}/frames").shape[:3]) == (frames, *size)


def _assert_prepared_at(cache: CaptureCache, size: tuple[int, int]) -> None:
    """A 4K capture lands in the cache at ``--max-side``'s size, its camera scaled alike, every frame tracked."""
    _assert_frames(cache, UHD_FRAMES, size)
    camera = cache.cameras[0]
    assert (camera.height, camera.width) == size and camera.K[0][2] == pytest.approx(size[1] / 2, abs=1)
    assert cache.manifest.meta["prepare"]["faces"]["cam0"]["frames_without_face"] == 0


def _fail() -> None:
    raise AssertionError("the command's output is not what it should be")


def _cache_cases() -> list[Case]:
    cases = []
    missing = lambda w, t: str(t / "absent")  # noqa: E731 - a cache folder that was never made
    for breakage in ("manifest.json not JSON", "manifest.json of a newer schema", "blend weights listed, file missing",
                     "blend weights .npy truncated", "NaN in blend weights", "Inf in pose"):
        cases.append(Case("inspect", breakage, lambda w, t, b=breakage: ["inspect", str(w.actor(t, b))],
                          INSPECT_MESSAGES[breakage], leaves_none=()))
    for breakage in ("manifest.json not JSON", "manifest.json of a newer schema", "frames listed, file missing",
                     "frames .npy truncated"):
        cases.append(Case("features", breakage,
                          lambda w, t, b=breakage: ["features", "--cache", str(w.actor(t, b)), "--extractor",
                                                    "mediapipe", "--no-progress"], CACHE_MESSAGES[breakage],
                          leaves_none=("actor/features/.*",)))
    for breakage in ("blend weights listed, file missing", "blend weights .npy truncated", "NaN in blend weights"):
        cases += [
            Case("fit", f"head VAE: {breakage}", lambda w, t, b=breakage: _fit_head_vae(w.actor(t, b), t),
                 CACHE_MESSAGES[breakage], leaves_none=("out/**/*.ckpt",)),
            Case("encode", breakage, lambda w, t, b=breakage: ["encode", "--ckpt", w.checkpoint("vae"), "--cache",
                                                               str(w.actor(t, b)), "--name", "bad"],
                 CACHE_MESSAGES[breakage], leaves_none=("actor/latents/bad*",)),
            Case("render-mesh", breakage, lambda w, t, b=breakage: ["render-mesh", "--ckpt", w.checkpoint("vae"),
                                                                    "--cache", str(w.actor(t, b)), "--name", "bad"],
                 CACHE_MESSAGES[breakage], leaves_none=("actor/renders/bad",)),
        ]
    cases += [
        Case("render-mesh", "Inf in pose", lambda w, t: ["render-mesh", "--ckpt", w.checkpoint("vae"), "--cache",
                                                         str(w.actor(t, "Inf in pose")), "--name", "bad"],
             CACHE_MESSAGES["Inf in pose"], leaves_none=("actor/renders/bad",)),
        Case("features", "missing cache folder", lambda w, t: ["features", "--cache", missing(w, t), "--extractor",
                                                               "mediapipe"], "does not exist; create one with"),
        Case("features", "a camera the cache lacks",
             lambda w, t: ["features", "--cache", str(w.actor(t)), "--extractor", "mediapipe", "--camera", "nope"],
             "no camera 'nope'", leaves_none=("actor/features/.*",)),
        Case("fit", "animator: features of a name the cache lacks",
             lambda w, t: _animator("fit", w.actor(t), t, "--model.init_args.features=deca_resnet"),
             "'features/deca_resnet' is missing; it is written by `python -m avatar_lightning features",
             leaves_none=("out/**/*.ckpt",)),
        Case("fit", "head VAE: missing cache folder", lambda w, t: _fit_head_vae(t / "absent", t),
             "does not exist; create one with", leaves_none=("out/**/*.ckpt",)),
        Case("fit", "--ckpt_path of another model (re-render U-Net)",
             lambda w, t: _fit_head_vae(w.actor(t), t, f"--ckpt_path={w.checkpoint('rerender')}"),
             "is a checkpoint of Rerenderer, but this config's model is HeadVAE", leaves_none=("out/**/*.ckpt",)),
        Case("fit", "--ckpt_path of another model, saved without its class path",
             lambda w, t: _fit_head_vae(w.actor(t), t, f"--ckpt_path={_without_class_path(w, t, 'rerender')}"),
             "is a checkpoint of another model (it holds 'in_channels'", leaves_none=("out/**/*.ckpt",)),
        Case("fit", "--ckpt_path truncated", lambda w, t: _fit_head_vae(w.actor(t), t,
                                                                       f"--ckpt_path={_truncated_checkpoint(w, t)}"),
             "truncated.ckpt is truncated or not a checkpoint file", leaves_none=("out/**/*.ckpt",)),
    ]
    for command in ("validate", "test", "predict"):
        cases += [
            Case(command, "features of the wrong size for the checkpoint",
                 lambda w, t, c=command: _animator(c, w.actor(t, "features of the wrong size (20, not 1434)"), t,
                                                   f"--ckpt_path={w.checkpoint('animator')}"),
                 "has 20 values per frame", leaves_none=("out/**/scores.json",)),
            Case(command, "--ckpt_path of another model (head VAE)",
                 lambda w, t, c=command: _animator(c, w.actor(t), t, f"--ckpt_path={w.checkpoint('vae')}"),
                 "is a checkpoint of HeadVAE, but this config's model is Animator",
                 leaves_none=("out/**/scores.json",)),
        ]
    for flag, other in (("head-vae", "rerender"), ("rerender", "animator"), ("animator", "vae")):
        cases.append(Case("export", f"--{flag} is a checkpoint of another model",
                          lambda w, t, f=flag, o=other: _export(w, t, **{f: w.checkpoint(o)}), "checkpoint"))
    cases += [
        Case("export", "--head-vae missing", lambda w, t: _export(w, t, **{"head-vae": str(t / "absent.ckpt")}),
             "absent.ckpt does not exist"),
        Case("export", "--head-vae truncated", lambda w, t: _export(w, t, **{"head-vae": _truncated_checkpoint(w, t)}),
             "is truncated or not a checkpoint file"),
        Case("export", "missing cache folder", lambda w, t: _export(w, t, cache=t / "absent"), "does not exist"),
        Case("encode", "--ckpt of another model (animator)",
             lambda w, t: ["encode", "--ckpt", w.checkpoint("animator"), "--cache", str(w.actor(t)), "--name", "bad"],
             "is not a HeadVAE checkpoint", leaves_none=("actor/latents/bad*",)),
        Case("encode", "missing cache folder",
             lambda w, t: ["encode", "--ckpt", w.checkpoint("vae"), "--cache", missing(w, t)], "does not exist"),
        Case("render-mesh", "--ckpt missing",
             lambda w, t: ["render-mesh", "--ckpt", str(t / "absent.ckpt"), "--cache", str(w.actor(t)), "--name",
                           "bad"], "absent.ckpt", leaves_none=("actor/renders/bad",)),
        Case("inspect", "missing cache folder", lambda w, t: ["inspect", missing(w, t)], "does not exist",
             leaves_none=()),
        Case("synth", "--out is a file", lambda w, t: ["synth", "--out", w.video("face"), "--preset", "tiny"],
             "is a file, not a folder", leaves_none=()),
        Case("synth", "--out is a folder of other files",
             lambda w, t: (t / "out").mkdir() or (t / "out" / "notes.txt").write_text("mine") and
             ["synth", "--out", str(t / "out"), "--preset", "tiny"], "holds no capture cache",
             leaves_none=("out/manifest.json",)),
        Case("compare", "a folder without runs", lambda w, t: ["compare", str(w.videos), "--out", str(t / "out")],
             "no scores.json found"),
        Case("compare", "missing runs folder", lambda w, t: ["compare", str(t / "absent"), "--out", str(t / "out")],
             "does not exist"),
        Case("evaluate", "missing runs folder",
             lambda w, t: ["evaluate", "--runs", str(t / "absent"), "--cache", str(w.actor(t)), "--out",
                           str(t / "out")], "does not exist"),
        Case("evaluate", "a folder without runs",
             lambda w, t: ["evaluate", "--runs", str(w.videos), "--cache", str(w.actor(t)), "--out", str(t / "out")],
             "no animator run"),
        Case("evaluate", "a run whose checkpoint is another model's (head VAE)",
             lambda w, t: ["evaluate", "--runs", _run_with(t, w.checkpoint("vae")), "--cache", str(w.actor(t)),
                           "--out", str(t / "out"), "--head-vae", w.checkpoint("vae")], "is not a Animator checkpoint"),
        Case("evaluate", "latents whose head VAE is not recorded, no --head-vae",
             lambda w, t: ["evaluate", "--runs", _run_with(t, w.checkpoint("animator")), "--cache", str(w.actor(t)),
                           "--out", str(t / "out")], "no head VAE recorded for latents/head_vae; pass --head-vae"),
        Case("evaluate", "--rerender is a checkpoint of another model",
             lambda w, t: ["evaluate", "--runs", _run_with(t, w.checkpoint("animator")), "--cache", str(w.actor(t)),
                           "--out", str(t / "out"), "--head-vae", w.checkpoint("vae"), "--rerender",
                           w.checkpoint("vae")],
             "is not a Rerenderer checkpoint"),
        Case("evaluate", "--synthetic-drivers a cache without truth (an ingested video)",
             lambda w, t: ["evaluate", "--runs", _run_with(t, w.checkpoint("animator")), "--cache", str(w.actor(t)),
                           "--out", str(t / "out"), "--head-vae", w.checkpoint("vae"), "--synthetic-drivers",
                           _ingested(w, t)],
             "has no truth/blend_weights"),
    ]
    for piece in ("avatar.json", "head_vae.ckpt", "rerender.ckpt", "animator.ckpt", "template.npz", "clean_plates"):
        cases.append(Case("animate", f"avatar folder without {piece}",
                          lambda w, t, p=piece: ["animate", "--driving", w.video("face"), "--avatar",
                                                 _avatar_without(w, t, p), "--out", str(t / "out.mp4")],
                          piece.split(".")[0], leaves_none=("out.mp4", ".out*")))
    cases.append(Case("animate", "avatar folder whose head_vae.ckpt is another model's",
                      lambda w, t: ["animate", "--driving", w.video("face"), "--avatar",
                                    _avatar_with(w, t, "head_vae.ckpt", w.checkpoint("rerender")),
                                    "--out", str(t / "out.mp4")], "is not a HeadVAE checkpoint",
                      leaves_none=("out.mp4", ".out*")))
    return cases


CACHE_MESSAGES = {
    "manifest.json not JSON": "not valid JSON",
    "manifest.json of a newer schema": "newer than this avatar_lightning",
    "blend weights listed, file missing": "blend_weights",
    "blend weights .npy truncated": "blend_weights",
    "NaN in blend weights": "hold NaN or Inf",
    "Inf in pose": "hold NaN or Inf",
    "frames listed, file missing": "frames",
    "frames .npy truncated": "frames",
}
INSPECT_MESSAGES = {**CACHE_MESSAGES, "blend weights listed, file missing": "missing on disk",
                    "blend weights .npy truncated": "unreadable .npy file", "NaN in blend weights": "NaN or Inf",
                    "Inf in pose": "NaN or Inf"}
CASES = _video_cases() + _cache_cases()


# ---------------------------------------------------------------------------------------------- running them
@dataclass
class Outcome:
    code: int
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    @property
    def message(self) -> str:
        """The error line and its indented continuation (``inspect`` lists each problem below it)."""
        lines = self.stderr.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("error:"))
        end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
        return " ".join(line.strip() for line in lines[start:end])


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    from avatar_lightning.cli import main

    capsys.readouterr()
    code = main(argv)
    return Outcome(code, capsys.readouterr().err)


def run_as_user(argv: list[str]) -> Outcome:
    """A fresh process, as a terminal runs it (argparse's own usage errors exit 2 there too)."""
    result = subprocess.run([sys.executable, "-m", "avatar_lightning", *argv], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "WANDB_MODE": "offline"})
    return Outcome(result.returncode, result.stderr)


def check(case: Case, outcome: Outcome, tmp: Path) -> None:
    assert outcome.code == case.code, (case.id, outcome.stderr[-3000:])
    assert "Traceback" not in outcome.stderr, (case.id, outcome.stderr[-3000:])
    if case.code:
        assert len(outcome.error_lines) == 1, (case.id, outcome.stderr[-3000:])
        assert case.message in outcome.message, (case.id, case.message, outcome.message)
    left = [str(path.relative_to(tmp)) for pattern in case.leaves_none for path in tmp.glob(pattern)]
    assert not left, (case.id, f"left behind {left}")
    if case.check is not None:
        case.check(tmp)


@pytest.fixture(scope="module")
def world(avatar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("bad_input"), avatar_dir)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check(case, run_in_process(case.argv(world, tmp_path), capsys), tmp_path)


# Lightning's own start-of-run lines, which every `fit` prints before it reads any data: they describe the run.
LIGHTNING_START = ("Seed set to ", "GPU available: ", "TPU available: ", "HPU available: ")
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


@pytest.mark.slow
def test_bad_input_as_a_user_sees_it(world: World, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The whole matrix again, each case a fresh process: nothing but our own lines on stderr for failures."""
    for case in CASES:
        tmp = tmp_path_factory.mktemp("case")
        outcome = run_as_user(case.argv(world, tmp))
        check(case, outcome, tmp)
        if case.code:
            ours = ("error:", " ", *(LIGHTNING_START if case.command in LIGHTNING_COMMANDS else ()))
            others = [line for line in outcome.stderr.splitlines() if line.strip() and not line.startswith(ours)]
            assert not others, (case.id, others)


def print_table() -> None:
    """``python -m tests.test_bad_input``: the matrix as a markdown table, each case run as a fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        world = make_world(Path(folder) / "world")
        print("| command | input tried | exit | message |\n|---|---|---|---|")
        for i, case in enumerate(CASES):
            tmp = Path(folder) / f"case{i}"
            tmp.mkdir()
            outcome = run_as_user(case.argv(world, tmp))
            line = outcome.message if outcome.error_lines else "(works)" if outcome.code == 0 else "?"
            line = line.replace(folder, "…").replace(str(REPO_ROOT), ".").replace("|", "\\|")
            print(f"| {case.command} | {case.bad} | {outcome.code} | {line} |", flush=True)


if __name__ == "__main__":
    print_table()
