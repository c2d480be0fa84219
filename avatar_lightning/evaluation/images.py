"""The full chain's frames against the captured ones: PSNR, SSIM and LPIPS over the whole frame and the face box.

The chain: animator latents -> head VAE decode -> the template deformed and posed by the capture's tracked pose ->
rasterised from each capture camera -> re-render U-Net -> composited over the clean plate (``avatar.renderer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from avatar_lightning.avatar.folder import Avatar
from avatar_lightning.avatar.renderer import AvatarRenderer
from avatar_lightning.cache.layout import BLEND_WEIGHTS, POSE, clean_plate_array, frames_array
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.cache.template import load_template
from avatar_lightning.errors import CacheError
from avatar_lightning.evaluation.candidates import HeldOut
from avatar_lightning.render import Cameras

FACE_MARGIN = 0.1  # the face box: the projected tracked mesh's bounds, widened by 10 % on each side
LPIPS_SIDE = 128  # face boxes are resized to this square for LPIPS (AlexNet needs more than a tiny crop)


class ImageScorer:
    """The full chain's frames for chosen held-out rows and cameras, against the captured frames.

    Built once (captured frames, face boxes and tracked poses are read here); :meth:`score` renders one
    candidate's latents for those rows from every camera.
    """

    def __init__(self, cache: CaptureCache, head_vae: Any, rerenderer: Any, rows: np.ndarray,
                 cameras: Sequence[str] | None = None, lpips: Any = None) -> None:
        names = list(cameras) if cameras else [c.name for c in cache.cameras]
        records = {c.name: c for c in cache.cameras}
        if unknown := [n for n in names if n not in records]:
            raise CacheError(f"{cache.root}: no camera {unknown}; cameras are {list(records)}")
        self.rows, self.lpips = np.asarray(rows), lpips
        mesh = load_template(cache)
        self.poses = torch.from_numpy(np.asarray(cache.array(POSE)[self.rows], np.float32))
        plates = {n: cache.read(clean_plate_array(n)) for n in names}
        avatar = Avatar(cache.root, {"default_pose": self.poses.mean(0).tolist()}, head_vae, rerenderer, None, mesh,
                        [records[n] for n in names], plates)
        self.renderers = {n: AvatarRenderer(avatar, n, fps=cache.fps) for n in names}
        with torch.no_grad():
            tracked = mesh.deform(torch.from_numpy(np.asarray(cache.array(BLEND_WEIGHTS)[self.rows], np.float32)),
                                  self.poses)
        self.captured, self.boxes = {}, {}
        for n in names:
            self.captured[n] = torch.from_numpy(np.asarray(cache.array(frames_array(n))[self.rows])).permute(
                0, 3, 1, 2).float() / 255
            pixels, _ = Cameras.from_dict(records[n]).project_to_pixels(tracked)
            self.boxes[n] = _face_boxes(pixels.numpy(), records[n].width, records[n].height)

    @torch.no_grad()
    def score(self, z: np.ndarray, chunk: int = 16) -> dict[str, float | None]:
        """Mean PSNR / SSIM (/ LPIPS) over rows and cameras of latents ``z (len(rows), Z)``."""
        from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

        values: dict[str, list[float]] = {k: [] for k in ("psnr", "ssim", "psnr_face", "ssim_face", "lpips",
                                                          "lpips_face")}
        for name, renderer in self.renderers.items():
            for start in range(0, len(self.rows), chunk):
                part = slice(start, start + chunk)
                image = renderer.render(torch.from_numpy(np.ascontiguousarray(z[part], np.float32)),
                                        list(range(start, start + len(z[part]))), poses=self.poses[part])
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
        return {k: (float(np.mean(v)) if v else None) for k, v in values.items()}


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
