"""``python -m avatar_lightning animate``: a driving video of anyone in, the actor's avatar performing it out.

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

import argparse
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from scipy.spatial.transform import Rotation
from torch import Tensor

from avatar_lightning.avatar import Avatar, load_avatar
from avatar_lightning.cache.manifest import CameraRecord
from avatar_lightning.cache.pages import release_pages
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.compose import compose
from avatar_lightning.errors import CacheError
from avatar_lightning.features.extract import feature_array, valid_array
from avatar_lightning.features.head_pose import HeadRotationTracker
from avatar_lightning.features.tracked_blend import NAME as TRACKED_BLEND
from avatar_lightning.precision import PRECISIONS, autocast, resolve_precision
from avatar_lightning.render import Cameras, RasterSettings, get_rasterizer, render_textured
from avatar_lightning.runtime import BACKENDS, make_runner
from avatar_lightning.video import VideoWriter, probe_video

PoseSource = Literal["fixed", "driving"]
Expression = Literal["animator", "retarget"]
ORBIT_DEGREES = 30.0  # the orbit swings the view +-30 degrees about the head's vertical axis
ORBIT_SECONDS = 4.0  # one swing left and back
# The driving video is ingested with its longer side at most this many pixels: the extractors crop the face and
# resize it to 192-224 px, and the side-by-side panel is scaled to the avatar's height, so full 1080p or 4K
# frames would only cost disk (10 min of 1080p at 30 fps is 112 GB of raw frames; at 720: 16 GB).
DRIVING_MAX_SIDE = 720


def frames_array(cache: CaptureCache) -> str:
    """The driving cache's one camera's frames."""
    return f"cameras/{cache.cameras[0].name}/frames"


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


def orbit_cameras(record: CameraRecord, centre: Tensor, frames: Sequence[int], fps: float) -> Cameras:
    """Novel views swinging about the head's vertical axis, at the capture camera's distance and focal length."""
    R, t = torch.tensor(record.R, dtype=torch.float32), torch.tensor(record.t, dtype=torch.float32)
    eye0 = -(R.T @ t) - centre
    angles = torch.tensor([math.radians(ORBIT_DEGREES) * math.sin(2 * math.pi * f / (ORBIT_SECONDS * fps))
                           for f in frames])
    cos, sin = torch.cos(angles), torch.sin(angles)
    eyes = torch.stack([cos * eye0[0] + sin * eye0[2], eye0[1].expand_as(cos), -sin * eye0[0] + cos * eye0[2]], 1)
    return Cameras.look_at(eyes + centre, centre, width=record.width, height=record.height, focal=record.K[0][0])


class AvatarRenderer:
    """Latents ``z (B, Z)`` -> composited frames ``(B, H, W, 3) uint8`` from one capture camera or an orbit."""

    def __init__(self, avatar: Avatar, camera: str | None = None, orbit: bool = False,
                 background: np.ndarray | None = None, fps: float = 25.0, device: torch.device | None = None,
                 precision: str = "32", backend: str = "torch") -> None:
        self.avatar, self.orbit, self.fps = avatar, orbit, fps
        self.device = device or torch.device("cpu")
        # float32 unless asked: scores (evaluate) stay comparable; `animate` asks for `auto` (bf16 where native)
        self.precision = resolve_precision(precision, self.device, backend)
        # The two image networks through the chosen inference backend (avatar_lightning.runtime); torch: eager.
        self.decode = make_runner(avatar.head_vae.vae.decoder, backend)
        self.unet = make_runner(avatar.rerenderer.unet, backend)
        self.record = avatar.camera(camera)
        self.pose = torch.tensor(avatar.info["default_pose"], dtype=torch.float32, device=self.device)
        size = (self.record.height, self.record.width)
        if background is not None:
            plate = cv2.resize(background, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        elif orbit:  # a capture camera's plate does not match a novel view: a neutral backdrop
            plate = np.full((*size, 3), 128, dtype=np.uint8)
        else:
            plate = avatar.plates[self.record.name]
        self.plate = torch.from_numpy(np.ascontiguousarray(plate)).to(self.device).permute(2, 0, 1)[None].float() / 255
        self.settings = RasterSettings()
        self.rasterizer = get_rasterizer(self.settings.backend, self.device)
        self.camera = Cameras.from_dict(self.record).to(self.device)

    def driven_pose(self, rotations: np.ndarray) -> Tensor:
        """Poses ``(B, 6)``: the driving head's rotations ``(B, 3, 3)`` (camera coordinates, relative to its first
        frame) turned into world rotations as seen from this renderer's capture camera, applied on top of the
        avatar's default pose; the translation stays the default's."""
        camera = np.asarray(self.record.R, dtype=np.float64)
        world = np.einsum("ji,bjk,kl->bil", camera, rotations, camera)  # R_c^T R R_c
        default = Rotation.from_rotvec(self.pose[:3].cpu().double().numpy())
        rotvec = (Rotation.from_matrix(world) * default).as_rotvec()
        translation = np.broadcast_to(self.pose[3:].cpu().numpy(), (len(rotations), 3))
        return torch.from_numpy(np.concatenate([rotvec, translation], axis=1)).float().to(self.device)

    @torch.no_grad()
    def render(self, z: Tensor, frames: Sequence[int], rotations: np.ndarray | None = None,
               blend_weights: Tensor | None = None, poses: Tensor | None = None) -> np.ndarray:
        """Composited frames of latents ``z``; the head posed by ``poses`` (``(B, 6)``, e.g. the capture's tracked
        poses when scoring held-out frames), else by ``rotations`` (the driving head's, ``(B, 3, 3)``), else fixed."""
        with autocast(self.precision, self.device):
            texture, blend = self.decode(z.to(self.device))
        texture, blend = texture.float(), blend.float()
        if blend_weights is not None:  # --expression retarget: the driver's own weights shape the mesh
            blend = blend_weights.to(self.device, blend.dtype)
        if poses is not None:
            pose = poses.to(self.device, blend.dtype)
        else:
            pose = self.pose.expand(len(z), 6) if rotations is None else self.driven_pose(rotations)
        vertices = self.avatar.mesh.deform(blend, pose)
        cameras = (orbit_cameras(self.record, pose[0, 3:].cpu(), frames, self.fps).to(self.device)
                   if self.orbit else self.camera)
        i_orig, coverage = render_textured(self.avatar.mesh, vertices, texture.permute(0, 2, 3, 1), cameras,
                                           self.settings, self.rasterizer)
        i_orig, coverage = i_orig.permute(0, 3, 1, 2), coverage.permute(0, 3, 1, 2)
        with autocast(self.precision, self.device):
            raw = self.unet(self.avatar.rerenderer.net_input(i_orig, coverage))
        image = compose(i_orig, raw.float(), self.plate).i_out  # eq. 1 over this renderer's plate
        return (image.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


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
    ``precision``: the networks' arithmetic (``avatar_lightning.precision``: ``32``, ``bf16``, ``16`` or ``auto``);
    ``device``: where the avatar runs (its models are moved there; nvdiffrast rasterises on CUDA where it imports).
    ``backend``: how the head VAE's decoder and the U-Net run (``avatar_lightning.runtime``: torch, onnxruntime,
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
    frames = driving.array(frames_array(driving)) if with_driving or pose == "driving" else None
    retarget = None
    if expression == "retarget":
        if not driving.has(feature_array(TRACKED_BLEND)):
            raise CacheError(f"{driving.root}: no {feature_array(TRACKED_BLEND)} for --expression retarget: "
                             f"`python -m avatar_lightning features --cache {driving.root} --extractor tracked_blend`")
        retarget = driving.array(feature_array(TRACKED_BLEND))
        if retarget.shape[1] != avatar.mesh.num_blend_shapes:
            raise CacheError(f"{driving.root}: {retarget.shape[1]} tracked blend weights but the avatar's head has "
                             f"{avatar.mesh.num_blend_shapes} blend shapes")
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
    from avatar_lightning.stages.features import extract_features
    from avatar_lightning.stages.ingest import ingest_video

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


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_lightning animate",
        description="Animate an avatar (from `export`) with a driving video of any person; writes an mp4.",
    )
    parser.add_argument("--driving", required=True, help="driving video (mp4, mov, avi, webm)")
    parser.add_argument("--avatar", required=True, help="avatar folder written by `python -m avatar_lightning export`")
    parser.add_argument("--out", required=True, help="output video, e.g. out.mp4")
    view = parser.add_mutually_exclusive_group()
    view.add_argument("--camera", help="render from this capture camera (default: the first)")
    view.add_argument("--orbit", action="store_true", help="render from a novel view orbiting the head")
    parser.add_argument("--side-by-side", action="store_true", help="put the driving frame left of the avatar")
    parser.add_argument("--pose", default="fixed", choices=("fixed", "driving"),
                        help="head pose: the actor's average (fixed) or the driving head's rotation relative to its "
                             "first frame (driving)")
    parser.add_argument("--expression", default="animator", choices=("animator", "retarget"),
                        help="animator: the paper's chain (the latent gives blend weights and texture); retarget: the "
                             "mesh takes the driver's own fitted blend weights (tracked_blend), the texture the latent")
    parser.add_argument("--background", help="an image to composite over instead of the camera's clean plate")
    parser.add_argument("--work", help="keep the ingested driving cache here (default: a temporary folder)")
    parser.add_argument("--chunk", type=int, default=16, help="frames rendered per batch")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (CUDA where present)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="the networks' arithmetic: auto (bf16 where the CPU or GPU does it natively, else 32), "
                             "32, bf16, or 16 (CUDA)")
    parser.add_argument("--backend", default="torch", choices=BACKENDS,
                        help="how the head VAE decoder and the re-render U-Net run: torch (default), onnxruntime "
                             "(float32; faster than torch in float32 on CPUs without native bf16, see "
                             "benchmarks/backends.py) or compile (torch.compile)")
    parser.add_argument("--driving-size", type=int, default=DRIVING_MAX_SIDE, metavar="PIXELS",
                        help="scale larger driving frames down to this longer side on ingest (default: %(default)s)")
    parser.add_argument("--score", action="store_true",
                        help="then score the transfer (score-transfer: FaceMesh on the driving video and on the "
                             "avatar's frames); writes <out>.transfer.json and .png")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.driving_size < 64:
        parser.error(f"--driving-size must be at least 64 pixels, got {args.driving_size}")
    check_output_video(args.out, args.driving, args.overwrite)
    background = None
    if args.background:
        image = cv2.imread(args.background, cv2.IMREAD_COLOR)
        if image is None:
            raise CacheError(f"{args.background}: not a readable image")
        background = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else None
    try:
        device = device or torch.device(args.device)
        precision = resolve_precision(args.precision, device, args.backend)
    except (RuntimeError, ValueError) as error:
        parser.error(str(error))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device here")
    avatar = load_avatar(args.avatar)
    report = animate_video(args.driving, avatar, args.out, args.work, args.camera, args.orbit, args.side_by_side,
                           background, args.chunk, not args.no_progress, args.pose, args.expression,
                           args.driving_size, precision, device, args.backend)
    faceless = (f"; no face in {report.frames_without_face} frames (features interpolated from neighbours, "
                "every frame rendered)" if report.frames_without_face else "")
    print(f"wrote {report.out}: {report.frames} frames at {report.fps:g} fps in {report.seconds:.1f} s "
          f"({report.frames_per_second:.1f} frames/s on {device.type}, {args.backend}, precision {precision})"
          f"{faceless}")
    if args.score:
        from avatar_lightning.transfer_score import markdown_table, score_videos, write_report

        score, driver, rendered = score_videos(args.driving, report.avatar_spec)
        json_path, png_path = write_report(score, driver, rendered, Path(args.out).with_suffix(".transfer"),
                                           title=f"{args.driving} -> {args.avatar}")
        print(markdown_table(score))
        print(f"wrote {json_path} and {png_path}")
    return 0
