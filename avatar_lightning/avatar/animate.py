"""A driving video of anyone in, the actor's avatar performing it out: the ``animate`` command's work.

The chain per frame: features (the extractor the animator was trained on, with the same settings) -> animator
(zero residual; streaming, with a bounded look-ahead of ``window - 1`` frames: each frame's latent averages every
8-frame window that contains it, as in training and scoring) -> head VAE decoder (blend weights, UV texture) ->
mesh deformed and posed (the actor's average head pose, or ``--pose driving``: the driving head's rotation
relative to its first frame) -> rasterised from a capture camera or an orbiting novel view -> re-render U-Net ->
composited (alpha and beta over the clean plate or a user background) -> H.264 mp4 through PyAV.

The driving video is first ingested into a one-camera cache (frames and features on disk, under ``--work``), then
frames flow through in chunks: memory stays flat in the video's length. Frames without a face keep features
interpolated from their neighbours (the features stage does that) and are rendered like the others; their
count is reported.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from avatar_lightning.avatar.folder import Avatar
from avatar_lightning.avatar.renderer import AvatarRenderer
from avatar_lightning.cache.layout import feature_array, frames_array, valid_array
from avatar_lightning.cache.pages import release_pages
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.errors import CacheError
from avatar_lightning.features.head_pose import HeadRotationTracker
from avatar_lightning.features.tracked_blend import NAME as TRACKED_BLEND
from avatar_lightning.video import VideoWriter, probe_video

PoseSource = Literal["fixed", "driving"]
Expression = Literal["animator", "retarget"]
# The driving video is ingested with its longer side at most this many pixels: the extractors crop the face and
# resize it to 192-224 px, and the side-by-side panel is scaled to the avatar's height, so full 1080p or 4K
# frames would only cost disk (10 min of 1080p at 30 fps is 112 GB of raw frames; at 720: 16 GB).
DRIVING_MAX_SIDE = 720


@dataclass
class AnimationReport:
    """What ``animate`` did: counts a user should see, and its speed."""

    frames: int
    frames_without_face: int
    fps: float
    seconds: float
    out: Path
    avatar_region: tuple[int, int, int, int] | None = None  # (x, y, w, h) of the avatar in a side-by-side video

    @property
    def avatar_spec(self) -> str:
        """The avatar's frames in ``out`` as a video spec (``PATH`` or ``PATH@x,y,w,h``), e.g. for score-transfer."""
        return str(self.out) if self.avatar_region is None else f"{self.out}@{','.join(map(str, self.avatar_region))}"

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


def stream_latents(avatar: Avatar, features: np.ndarray, chunk: int) -> Iterator[tuple[int, Tensor]]:
    """``(first frame, latents (B, Z))`` in chunks, reading features chunk by chunk through the animator's stream."""
    stream = avatar.animator.stream()
    pending: list[Tensor] = []
    emitted = 0
    for start in range(0, len(features), chunk):
        x = torch.from_numpy(np.array(features[start : start + chunk], dtype=np.float32)).to(avatar.animator.device)
        for row in x:
            pending += stream.push(row)
        while len(pending) >= chunk:
            yield emitted, torch.stack(pending[:chunk])
            emitted, pending = emitted + chunk, pending[chunk:]
    pending += stream.flush()
    for i in range(0, len(pending), chunk):
        yield emitted + i, torch.stack(pending[i : i + chunk])


def side_by_side(driving: np.ndarray, rendered: np.ndarray) -> np.ndarray:
    """Driving frames ``(B, h, w, 3)`` scaled to the rendering's height, then the rendering to their right."""
    height = rendered.shape[1]
    width = round(driving.shape[2] * height / driving.shape[1])
    scaled = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in driving])
    return np.concatenate([scaled, rendered], axis=2)


def animate_cache(avatar: Avatar, driving: CaptureCache, out: str | Path, camera: str | None = None,
                  orbit: bool = False, with_driving: bool = False, background: np.ndarray | None = None,
                  chunk: int = 16, progress: Progress | None = None, pose: PoseSource = "fixed",
                  expression: Expression = "animator", precision: str = "32",
                  device: torch.device | None = None, backend: str = "torch") -> AnimationReport:
    """Render the avatar performing the driving cache's frames (features already extracted) into ``out``.

    ``pose``: ``fixed`` holds the actor's average head pose; ``driving`` follows the driving head's rotation
    relative to its first frame with a face (FaceMesh's rigid landmarks, tracked frame by frame).
    ``expression``: ``animator`` (the paper: the decoded latent gives blend weights and texture) or
    ``retarget`` (a departure: the mesh takes the driver's own fitted blend weights, ``features/tracked_blend``,
    and the texture still comes from the animator's latent; on real drivers the geometry then follows the driver
    at mean r 0.70 against 0.54-0.61 for the learned cells, see ``benchmarks/transfer_retarget.py``).
    ``precision``: the networks' arithmetic (:mod:`avatar.precision`: ``32``, ``bf16``, ``16`` or ``auto``);
    ``device``: where the avatar runs (its models are moved there; nvdiffrast rasterises on CUDA where it imports).
    ``backend``: how the head VAE's decoder and the U-Net run (:mod:`avatar.runtime`: torch, onnxruntime,
    compile).
    """
    if expression not in ("animator", "retarget"):
        raise ValueError(f"expression must be 'animator' or 'retarget', got {expression!r}")
    if pose not in ("fixed", "driving"):
        raise ValueError(f"pose must be 'fixed' or 'driving', got {pose!r}")
    name = avatar.features
    if not driving.has(feature_array(name)):
        raise CacheError(f"{driving.root}: no {feature_array(name)}; the avatar's animator reads {name!r} features: "
                         f"`python -m avatar_lightning features --cache {driving.root} --extractor {avatar.extractor}"
                         f" --relative {avatar.relative}`")
    features = driving.require_finite(feature_array(name))
    expected = avatar.animator.hparams.feature_dim
    if features.shape[1] != expected:
        raise CacheError(f"{driving.root}: {feature_array(name)} has {features.shape[1]} values per frame but the "
                         f"avatar's animator was trained on {expected}")
    valid = np.asarray(driving.array(valid_array(name)), dtype=bool)
    if not valid.any():
        raise CacheError(f"{driving.root}: no face was found in any of the {len(valid)} driving frames")
    frames = driving.array(frames_array(driving.cameras[0].name)) if with_driving or pose == "driving" else None
    retarget = None
    if expression == "retarget":
        if not driving.has(feature_array(TRACKED_BLEND)):
            raise CacheError(f"{driving.root}: no {feature_array(TRACKED_BLEND)} for --expression retarget: "
                             f"`python -m avatar_lightning features --cache {driving.root} --extractor tracked_blend`")
        retarget = np.asarray(driving.array(feature_array(TRACKED_BLEND)))
        if retarget.shape[1] > avatar.mesh.num_blend_shapes:
            raise CacheError(f"{driving.root}: {retarget.shape[1]} tracked blend weights but the avatar's head has "
                             f"{avatar.mesh.num_blend_shapes} blend shapes")
        # The driver's weights are the shared semantic shapes, first in every rig; a real actor's personal shapes
        # after them (capture.personal_shapes) belong to no driver and stay at rest.
        retarget = np.pad(retarget, ((0, 0), (0, avatar.mesh.num_blend_shapes - retarget.shape[1])))
    head = HeadRotationTracker() if pose == "driving" else None
    device = device or torch.device("cpu")
    avatar.to(device)
    renderer = AvatarRenderer(avatar, camera, orbit, background, driving.fps, device, precision, backend)
    n = len(features)
    task = progress.add_task("animate", total=n, rate="") if progress else None
    start_time = time.perf_counter()
    region = None
    with VideoWriter(out, fps=driving.fps) as writer:
        for first, z in stream_latents(avatar, features, chunk):
            index = list(range(first, first + len(z)))
            source = None
            if frames is not None:
                source = np.array(frames[first : first + len(z)])
                release_pages(frames)  # keep RSS flat in the driving video's length
            rotations = head(source) if head is not None else None
            blend = (torch.from_numpy(np.array(retarget[first : first + len(z)], np.float32))
                     if retarget is not None else None)
            image = renderer.render(z, index, rotations, blend)
            if with_driving:
                width, height = image.shape[2], image.shape[1]
                image = side_by_side(source, image)
                region = (image.shape[2] - width, 0, width, height)
            writer.write(image)
            if progress:
                rate = (first + len(z)) / (time.perf_counter() - start_time)
                progress.update(task, completed=first + len(z), rate=f"{rate:.1f} frames/s")
    return AnimationReport(n, int((~valid).sum()), driving.fps, time.perf_counter() - start_time, Path(out), region)


def animate_video(video: str | Path, avatar: Avatar, out: str | Path, work: str | Path | None = None,
                  camera: str | None = None, orbit: bool = False, with_driving: bool = False,
                  background: np.ndarray | None = None, chunk: int = 16, show_progress: bool = True,
                  pose: PoseSource = "fixed", expression: Expression = "animator",
                  driving_size: int = DRIVING_MAX_SIDE, precision: str = "32",
                  device: torch.device | None = None, backend: str = "torch") -> AnimationReport:
    """Ingest ``video`` into ``work`` (a temporary folder by default), extract features, animate into ``out``.

    Frames whose longer side exceeds ``driving_size`` are scaled down on ingest (see ``DRIVING_MAX_SIDE``).
    """
    from avatar_lightning.capture.ingest import ingest_video
    from avatar_lightning.features.run import extract_features

    with tempfile.TemporaryDirectory(prefix="animate-") as temporary:
        root = Path(work) if work else Path(temporary)
        cache_dir = root / "driving"
        if not (cache_dir / "manifest.json").is_file():
            info = probe_video(video)
            size = driving_size if max(info.width, info.height) > driving_size else None
            ingest_video(video, cache_dir, size=size, overwrite=True)
        if not CaptureCache(cache_dir).has(feature_array(avatar.features)):
            # Lightning's own progress bar runs here: one live display at a time, so ours starts after.
            extract_features(cache_dir, avatar.extractor, relative=avatar.relative, progress=show_progress)
        if expression == "retarget" and not CaptureCache(cache_dir).has(feature_array(TRACKED_BLEND)):
            extract_features(cache_dir, TRACKED_BLEND, progress=show_progress)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[rate]}"))
        with Progress(*columns, disable=not show_progress) as progress:
            return animate_cache(avatar, CaptureCache(cache_dir), out, camera, orbit, with_driving, background,
                                 chunk, progress, pose, expression, precision, device, backend)


def check_output_video(out: str | Path, driving: str | Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that is the driving video (never replaceable) or an existing file (unless ``overwrite``)."""
    out, driving = Path(out), Path(driving)
    if out.exists() and driving.exists() and out.resolve() == driving.resolve():
        raise CacheError(f"--out {out} is the driving video itself; choose another output file")
    if out.is_dir():
        raise CacheError(f"--out {out} is a folder; give a video file name, e.g. {out / 'avatar.mp4'}")
    if out.exists() and not overwrite:
        raise CacheError(f"--out {out} exists; pass --overwrite to replace it")
