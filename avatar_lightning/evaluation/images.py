"""The full chain's frames against the captured ones: what a person sees, in numbers (self-reenactment).

The chain: animator latents -> head VAE decode -> the template deformed and posed by the capture's tracked pose ->
rasterised from each capture camera -> re-render U-Net -> composited over the clean plate, with the body plate
moved by the frame's tracked torso sway where ``prepare`` made one (``avatar.renderer``, ``render.body``).
The actor's held-out frames drive it (their features, their tracked pose), and the rendered frames are compared
with the captured ones:

- pixels: PSNR, SSIM (torchmetrics) and LPIPS (where its backbone file is present) over the whole frame and the
  face box; PSNR and SSIM over the head, the pixels the *tracked* mesh (face and head shell) covers in the captured
  frame. Why the head apart: on the shared anchor 95 % of the face box's squared error lies outside the mesh (the
  hair's edge on a moving backdrop, collar and tie), so the face box scored a frozen face within 0.3 dB of the
  true expression, where the head tells them apart by 1.5 dB. The region comes from the captured frame's tracking,
  the same for every candidate, so a candidate cannot shrink what it is judged on;
- expression: FaceMesh on both, the ten measures of :mod:`.expression_measures`, per measure the Pearson
  correlation and the amplitude ratio (:func:`.transfer_score.score_measures`, the real frames in the driver's
  place): ``reenact_r`` (mean correlation), ``reenact_amplitude`` (median amplitude ratio; 1 = as lively as the
  person, 0 = frozen), and both for mouth opening;
- identity: dlib's face-recognition distance of each rendered frame to its real frame (:mod:`.identity`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from avatar_lightning.avatar.folder import Avatar
from avatar_lightning.avatar.renderer import AvatarRenderer
from avatar_lightning.cache.layout import BLEND_WEIGHTS, POSE, clean_plate_array, frames_array, torso_sway_array
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.cache.template import load_template
from avatar_lightning.errors import CacheError
from avatar_lightning.evaluation.candidates import HeldOut
from avatar_lightning.evaluation.identity import FaceEmbedder, identity_scores
from avatar_lightning.evaluation.transfer_score import frame_measures, score_measures
from avatar_lightning.render import Cameras, Mesh
from avatar_lightning.render.body import read_body_layer
from avatar_lightning.synth.face import NUM_LANDMARKS

FACE_MARGIN = 0.1  # the face box: the projected tracked mesh's bounds, widened by 10 % on each side
LPIPS_SIDE = 128  # face boxes are resized to this square for LPIPS (AlexNet needs more than a tiny crop)


def cache_avatar(cache: CaptureCache, head_vae: Any, rerenderer: Any, cameras: Sequence[str], mesh: Mesh,
                 default_pose: torch.Tensor) -> Avatar:
    """The training cache's actor as an :class:`Avatar` (no animator: latents come from the caller), for rendering
    held-out frames from its capture cameras over their clean plates."""
    records = {c.name: c for c in cache.cameras}
    if unknown := [n for n in cameras if n not in records]:
        raise CacheError(f"{cache.root}: no camera {unknown}; cameras are {list(records)}")
    plates = {n: cache.read(clean_plate_array(n)) for n in cameras}
    bodies = {n: body for n in cameras if (body := read_body_layer(cache, n)) is not None}
    return Avatar(cache.root, {"default_pose": default_pose.tolist()}, head_vae, rerenderer, None, mesh,
                  [records[n] for n in cameras], plates, bodies)


def tracked_sways(cache: CaptureCache, camera: str, rows: np.ndarray) -> torch.Tensor | None:
    """``(len(rows), 2)``: the torso's tracked sway in the captured frames ``rows`` of ``camera`` (self-reenactment
    poses the torso as the held-out frames did, as it poses the head by their tracked pose); None without a body
    plate."""
    if not cache.has(torso_sway_array(camera)):
        return None
    return torch.from_numpy(np.asarray(cache.array(torso_sway_array(camera))[rows], np.float32))


class ImageScorer:
    """The full chain's frames for chosen held-out rows and cameras, against the captured frames.

    Built once (captured frames, face boxes and tracked poses are read here; FaceMesh and the identity embedding
    run on the captured frames here); :meth:`score` renders one candidate's latents for those rows from every
    camera. The rows are spread over the test sequence, not consecutive: FaceMesh detects each frame on its own,
    and the expression scores are correlation and spread over the sampled frames (no timing).
    """

    def __init__(self, cache: CaptureCache, head_vae: Any, rerenderer: Any, rows: np.ndarray,
                 cameras: Sequence[str] | None = None, lpips: Any = None, measure_faces: bool = True,
                 embedder: FaceEmbedder | None = None) -> None:
        names = list(cameras) if cameras else [c.name for c in cache.cameras]
        records = {c.name: c for c in cache.cameras}
        if unknown := [n for n in names if n not in records]:
            raise CacheError(f"{cache.root}: no camera {unknown}; cameras are {list(records)}")
        self.rows, self.lpips, self.fps = np.asarray(rows), lpips, cache.fps
        mesh = load_template(cache)
        self.poses = torch.from_numpy(np.asarray(cache.array(POSE)[self.rows], np.float32))
        avatar = cache_avatar(cache, head_vae, rerenderer, names, mesh, self.poses.mean(0))
        self.renderers = {n: AvatarRenderer(avatar, n, fps=cache.fps) for n in names}
        self.sways = {n: tracked_sways(cache, n, self.rows) for n in names}
        with torch.no_grad():
            tracked = mesh.deform(torch.from_numpy(np.asarray(cache.array(BLEND_WEIGHTS)[self.rows], np.float32)),
                                  self.poses)
        self.captured, self.boxes, self.heads = {}, {}, {}
        real_frames = []
        for n in names:
            frames = np.asarray(cache.array(frames_array(n))[self.rows])  # (R, H, W, 3) uint8
            real_frames.append(frames)
            self.captured[n] = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
            pixels, _ = Cameras.from_dict(records[n]).project_to_pixels(tracked[:, :NUM_LANDMARKS])  # not the shell
            self.boxes[n] = _face_boxes(pixels.numpy(), records[n].width, records[n].height)
            self.heads[n] = self.renderers[n].coverage(tracked)  # (R, H, W) bool
        # every camera's rows, camera after camera, as score() renders them
        self.faces = FaceAgreement(np.concatenate(real_frames), cache.fps, measure_faces, embedder)

    @property
    def identity_floor(self) -> float | None:
        return self.faces.identity_floor

    @torch.no_grad()
    def score(self, z: np.ndarray, chunk: int = 16) -> dict[str, float | None]:
        """Mean PSNR / SSIM (/ LPIPS) over rows and cameras of latents ``z (len(rows), Z)``."""
        from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

        values: dict[str, list[float]] = {k: [] for k in ("psnr", "ssim", "psnr_face", "ssim_face", "psnr_head",
                                                          "ssim_head", "lpips", "lpips_face")}
        frames: list[np.ndarray] = []  # the rendered frames, camera after camera (as the real ones)
        for name, renderer in self.renderers.items():
            for start in range(0, len(self.rows), chunk):
                part = slice(start, start + chunk)
                sways = self.sways[name]
                image = renderer.render(torch.from_numpy(np.ascontiguousarray(z[part], np.float32)),
                                        list(range(start, start + len(z[part]))), poses=self.poses[part],
                                        sways=None if sways is None else sways[part])
                frames.append(image)
                rendered = torch.from_numpy(image).permute(0, 3, 1, 2).float() / 255
                target = self.captured[name][part]
                values["psnr"] += peak_signal_noise_ratio(rendered, target, data_range=1.0, reduction="none",
                                                          dim=(1, 2, 3)).tolist()
                # One SSIM map per frame; the face's SSIM is its mean inside the box (the whole frame's is the mean
                # of all of it), so the box is judged with the same windows as the frame, at one call per chunk.
                ssim, ssim_map = structural_similarity_index_measure(rendered, target, data_range=1.0,
                                                                     reduction="none", return_full_image=True)
                values["ssim"] += ssim.tolist()
                squared_error = (rendered - target) ** 2
                for error, ssim_of, head in zip(squared_error, ssim_map, self.heads[name][part], strict=True):
                    if head.any():  # a head out of view has no pixels to score
                        mse = float(error[:, head].mean())
                        values["psnr_head"].append(10 * np.log10(1.0 / mse) if mse > 0 else float("inf"))
                        values["ssim_head"].append(float(ssim_of[:, head].mean()))
                for i, (x0, y0, x1, y1) in enumerate(self.boxes[name][part]):
                    mse = float(squared_error[i, :, y0:y1, x0:x1].mean())
                    values["psnr_face"].append(10 * np.log10(1.0 / mse) if mse > 0 else float("inf"))
                    values["ssim_face"].append(float(ssim_map[i, :, y0:y1, x0:x1].mean()))
                    if self.lpips is not None:
                        values["lpips"].append(float(self.lpips(rendered[i : i + 1], target[i : i + 1])))
                        a, b = (torch.nn.functional.interpolate(image[i : i + 1, :, y0:y1, x0:x1],
                                                                (LPIPS_SIDE, LPIPS_SIDE), mode="bilinear",
                                                                align_corners=False) for image in (rendered, target))
                        values["lpips_face"].append(float(self.lpips(a, b)))
        scores: dict[str, float | None] = {k: (float(np.mean(v)) if v else None) for k, v in values.items()}
        return {**scores, **self.faces.score(np.concatenate(frames))}


class FaceAgreement:
    """What a person compares between real frames and the avatar's frames that stand for them, one by one.

    Built once on the real frames ``(N, H, W, 3) uint8`` (FaceMesh and the identity embedding run on them here);
    :meth:`score` takes the avatar's ``N`` frames in the same order. Frames are detected one by one (no tracking):
    they may be sampled across a sequence.
    """

    def __init__(self, real: np.ndarray, fps: float, measure_faces: bool = True,
                 embedder: FaceEmbedder | None = None) -> None:
        self.fps, self.embedder, self.count = fps, embedder, len(real)
        self.real_measures = frame_measures(real, len(real), consecutive=False) if measure_faces else None
        self.real_identity = embedder.embed(real) if embedder is not None else None

    @property
    def identity_floor(self) -> float | None:
        """The real frames' own spread in the identity embedding: what a perfect avatar's distance would be near."""
        if self.real_identity is None:
            return None
        return identity_scores(self.real_identity, self.real_identity).real_spread

    def score(self, rendered: np.ndarray) -> dict[str, float | None]:
        """``reenact_r``, ``reenact_mouth_r``, ``reenact_amplitude``, ``reenact_mouth_amplitude``,
        ``reenact_face_fraction`` (FaceMesh) and ``identity`` (dlib), where measured."""
        if len(rendered) != self.count:
            raise ValueError(f"{len(rendered)} rendered frames for {self.count} real ones")
        out: dict[str, float | None] = {}
        if self.real_measures is not None:
            agreement = score_measures(self.real_measures, frame_measures(rendered, len(rendered), False), self.fps)
            summary = agreement.summary()
            out.update(reenact_r=agreement.mean_pearson(), reenact_mouth_r=summary["mouth_open_pearson"],
                       reenact_amplitude=_finite(summary["amplitude"]),
                       reenact_mouth_amplitude=summary["mouth_open_amplitude"],
                       reenact_face_fraction=agreement.face_fraction)
        if self.real_identity is not None and self.embedder is not None:
            out["identity"] = identity_scores(self.real_identity, self.embedder.embed(rendered)).distance
        return out


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _face_boxes(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(B, V, 2)`` projected vertices -> ``(B, 4)`` int boxes ``x0, y0, x1, y1`` widened by FACE_MARGIN, clipped."""
    low, high = pixels.min(axis=1), pixels.max(axis=1)
    pad = (high - low) * FACE_MARGIN
    low, high = np.floor(low - pad), np.ceil(high + pad)
    x0, y0 = np.clip(low[:, 0], 0, width - 1), np.clip(low[:, 1], 0, height - 1)
    x1 = np.maximum(np.clip(high[:, 0], 0, width), x0 + 1)  # never empty, even for a head out of view
    y1 = np.maximum(np.clip(high[:, 1], 0, height), y0 + 1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(int)


def image_rows(data: HeldOut, count: int) -> np.ndarray:
    """Positions (into the concatenated test sequences) of ``count`` frames spread evenly over them."""
    total = sum(len(r) for r in data.rows)
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))
