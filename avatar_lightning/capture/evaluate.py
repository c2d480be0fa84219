"""Score a prepared capture against the truth of the synthetic actor it was made from (``prepare`` on its frames).

``prepare`` never reads the synthetic cache's tracking: it sees only mp4 files of its frames. Its results live in
its own frames of reference, so each comparison removes what is arbitrary and nothing more:

- head rotation: the prepared template's head frame differs from the truth's by one constant rotation Q, and an
  estimated calibration's world frame (camera 0) from the truth's by the known camera-0 rotation W, so
  ``R_est(t) ~ W R_true(t) Q``; Q is fitted once over all frames (the chordal mean), the error is the angle left
  per frame;
- blend weights: the same 17 semantic shapes on both sides, compared by Pearson correlation per shape;
- textures: the two UV layouts differ (each template's UVs come from its own neutral face) but share the
  triangle list, so the truth texture is resampled into the prepared layout through the triangles (same
  triangle, same barycentrics) and compared where the prepared frame saw the texel (its fused weight > 0).
  The captured frames are shaded (a directional light), the truth texture is albedo: the PSNR has that floor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from avatar_lightning.cache.layout import BLEND_WEIGHTS, POSE, TEXTURES, frames_array, template_array, truth_array
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.cache.template import load_template
from avatar_lightning.errors import CacheError
from avatar_lightning.render import RasterSettings, get_rasterizer, uv_to_clip
from avatar_lightning.render.rasterizer import RasterOutput
from avatar_lightning.synth.blendshapes import BLEND_SHAPE_NAMES
from avatar_lightning.video import write_video

KEY_SHAPES = ("jaw_open", "blink_left", "blink_right", "smile_left", "smile_right", "brow_up_left", "brow_up_right",
              "brow_down")
TEXTURE_FRAMES = 24


def export_videos(truth: CaptureCache, folder: Path, cameras: list[str] | None = None) -> list[Path]:
    """The synthetic capture's frames as mp4 files (H.264, CRF 18): what ``prepare`` would get from a studio."""
    folder.mkdir(parents=True, exist_ok=True)
    names = cameras or [c.name for c in truth.cameras]
    return [write_video(folder / f"{name}.mp4", truth.array(frames_array(name)), truth.fps) for name in names]


def rotation_errors(est_pose: np.ndarray, true_pose: np.ndarray, world: np.ndarray) -> np.ndarray:
    """Per-frame angle (degrees) between ``R_est`` and ``world R_true Q`` for the best constant Q."""
    r_est = Rotation.from_rotvec(est_pose[:, :3]).as_matrix()
    r_true = world[None] @ Rotation.from_rotvec(true_pose[:, :3]).as_matrix()
    u, _, vt = np.linalg.svd((r_true.transpose(0, 2, 1) @ r_est).sum(0))
    q = u @ np.diag([1, 1, np.sign(np.linalg.det(u @ vt))]) @ vt
    residual = (r_true @ q).transpose(0, 2, 1) @ r_est
    return np.degrees(Rotation.from_matrix(residual).magnitude())


def blend_correlations(est: np.ndarray, true: np.ndarray) -> dict[str, float | None]:
    """Pearson correlation per shape (None where the truth never moves it)."""
    out: dict[str, float | None] = {}
    for k, name in enumerate(BLEND_SHAPE_NAMES):
        if true[:, k].std() < 1e-6 or est[:, k].std() < 1e-9:
            out[name] = None if true[:, k].std() < 1e-6 else 0.0
            continue
        out[name] = float(np.corrcoef(est[:, k], true[:, k])[0, 1])
    return out


def _resample_truth_uv(prepared: CaptureCache, truth: CaptureCache, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each texel of the prepared layout: the truth layout's uv at the same surface point, and coverage.

    Over the face's triangles only: prepare's head shell (appended after them) has no counterpart in the truth's
    template, whose skull and hair are not part of the mesh.
    """
    ours, theirs = prepared.read(template_array("triangles")), truth.read(template_array("triangles"))
    ours = ours[: len(theirs)]
    if len(ours) < len(theirs) or not np.array_equal(np.sort(ours, 1), np.sort(theirs, 1)):
        raise CacheError("the prepared and the true template do not share a triangle list; cannot compare textures")
    # Each side winds its triangles towards its own camera: put the truth's corners in our order.
    order = np.argmax(theirs[:, None, :] == ours[:, :, None], axis=2)  # (F, 3): our corner j is their corner
    rasterizer = get_rasterizer("torch", torch.device("cpu"))
    uvs = torch.from_numpy(prepared.read(template_array("uvs")))
    faces = torch.from_numpy(prepared.read(template_array("uv_triangles"))[: len(theirs)])
    raster = rasterizer.rasterize(uv_to_clip(uvs), faces, (size, size))
    true_uvs = torch.from_numpy(truth.read(template_array("uvs")))
    true_faces = torch.from_numpy(np.take_along_axis(truth.read(template_array("uv_triangles")), order, 1))
    uv = rasterizer.interpolate(true_uvs, RasterOutput(raster.rast), true_faces)  # (1, T, T, 2)
    return uv, raster.triangle_id[0] >= 0


def texture_psnr(prepared: CaptureCache, truth: CaptureCache, frames: np.ndarray) -> float:
    """PSNR (dB) of prepared textures against the resampled truth over the texels seen in each frame."""
    from avatar_lightning.capture.prepare import camera_list
    from avatar_lightning.capture.textures import fuse_cameras

    size = prepared.record(TEXTURES).shape[1]
    uv, covered = _resample_truth_uv(prepared, truth, size)
    rasterizer = get_rasterizer("torch", torch.device("cpu"))
    mesh = load_template(prepared)
    cams = camera_list(prepared.cameras)
    names = [c.name for c in prepared.cameras]
    with torch.no_grad():
        verts = mesh.deform(torch.from_numpy(prepared.read(BLEND_WEIGHTS)[frames]),
                            torch.from_numpy(prepared.read(POSE)[frames]))
        images = [torch.from_numpy(np.asarray(prepared.array(frames_array(n))[frames], np.float32) / 255)
                  for n in names]
        _, weight = fuse_cameras(mesh, verts, images, cams, size, RasterSettings(near=0.05, far=50.0))
        true_tex = torch.from_numpy(np.asarray(truth.array(TEXTURES)[frames], np.float32) / 255)
        if true_tex.shape[1] != size:
            true_tex = torch.nn.functional.interpolate(true_tex.permute(0, 3, 1, 2), size=(size, size),
                                                       mode="area").permute(0, 2, 3, 1)
        expected = rasterizer.texture(true_tex, uv.expand(len(frames), -1, -1, -1))
        ours = torch.from_numpy(np.asarray(prepared.array(TEXTURES)[frames], np.float32) / 255)
        seen = (weight[..., 0] > 0.05) & covered
        squared = float(((ours - expected) ** 2).sum(-1)[seen].sum())
        count = int(seen.sum()) * 3
    return float(10 * np.log10(1.0 / max(squared / max(count, 1), 1e-12)))


def score_prepared(prepared: CaptureCache, truth: CaptureCache) -> dict[str, Any]:
    """Every figure of the issue's accuracy goals for one prepared capture of a synthetic actor."""
    true_pose, est_pose = truth.read(truth_array("pose")), prepared.read(POSE)
    if len(true_pose) != len(est_pose):
        raise CacheError(f"{prepared.root} has {len(est_pose)} frames but its truth {truth.root} {len(true_pose)}")
    first_est, first_true = prepared.cameras[0], truth.camera(_truth_camera(prepared, truth))
    world = np.array(first_est.R).T @ np.array(first_true.R)
    angles = rotation_errors(est_pose, true_pose, world)
    corr = blend_correlations(prepared.read(BLEND_WEIGHTS), truth.read(truth_array("blend_weights")))
    fit = prepared.manifest.meta["prepare"]["fit"]["cameras"]
    frames = np.linspace(0, len(est_pose) - 1, TEXTURE_FRAMES).round().astype(int)
    return {
        "frames": int(len(est_pose)),
        "cameras": len(prepared.cameras),
        "calibration_estimated": bool(prepared.manifest.meta["prepare"]["calibration"]["estimated"]),
        "median_rotation_error_deg": float(np.median(angles)),
        "p95_rotation_error_deg": float(np.percentile(angles, 95)),
        "median_reprojection_of_face_height": float(max(c["median_reprojection_of_face_height"]
                                                        for c in fit.values())),
        "blend_correlation": corr,
        "key_shape_min_correlation": float(min(corr[name] or 0.0 for name in KEY_SHAPES)),
        "texture_psnr_db": texture_psnr(prepared, truth, frames),
    }


def _truth_camera(prepared: CaptureCache, truth: CaptureCache) -> str:
    """The synthetic camera behind the prepared camera 0 (its source file is named after it)."""
    source = Path(prepared.manifest.meta["sources"][0].split("@")[0]).stem
    return source if source in {c.name for c in truth.cameras} else truth.cameras[0].name
