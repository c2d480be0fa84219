"""What ``prepare`` shows a person: an image grid and the numbers, in ``<cache>/report/``.

``grid.png``: one row per (sampled frame, camera): the captured frame | the fitted mesh's wireframe over it,
with FaceMesh's landmarks | I_orig, the mesh rendered with that frame's extracted texture over the clean plate
(with the body plate laid over it at the frame's torso sway, where ``prepare`` made one).
``prepare.json``: ``meta.prepare`` (calibration, faces, reprojection error, textures, clean and body plates, time).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from avatar_lightning.cache.layout import TEXTURES, clean_plate_array, frames_array, landmark_array, torso_sway_array
from avatar_lightning.cache.manifest import CameraRecord
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.capture.fitting import FitResult
from avatar_lightning.render import Cameras, Mesh, RasterSettings, render_textured
from avatar_lightning.render.body import read_body_layer

GRID_FRAMES = 4
TILE = 256  # each tile's longer side in pixels


def _tile(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    scale = TILE / max(h, w)
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _wireframe(image: np.ndarray, pixels: np.ndarray, triangles: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    out = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 512))
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    segments = np.round(pixels[edges] - 0.5).astype(np.int32)  # pixel centres at +0.5
    cv2.polylines(out, list(segments), False, (80, 255, 120), thickness, cv2.LINE_AA)
    for x, y in landmarks[np.isfinite(landmarks).all(1)][:, :2]:
        cv2.circle(out, (int(x), int(y)), thickness, (255, 60, 60), -1)
    return out


def frame_rows(cache: CaptureCache, mesh: Mesh, fit: FitResult, names: Sequence[str],
               records: Sequence[CameraRecord], frames: Sequence[int]) -> np.ndarray:
    """The grid as one ``uint8`` RGB image (rows: frame x camera; columns: captured, fit, I_orig over the frame's
    plate)."""
    rows = []
    settings = RasterSettings(near=0.05, far=50.0)
    bodies = {name: read_body_layer(cache, name) for name in names}
    for frame in frames:
        with torch.no_grad():
            verts = mesh.deform(torch.from_numpy(fit.blend_weights[frame : frame + 1]),
                                torch.from_numpy(fit.pose[frame : frame + 1]))
        texture = torch.from_numpy(np.asarray(cache.array(TEXTURES)[frame : frame + 1], np.float32) / 255)
        for name, record in zip(names, records, strict=True):
            camera = Cameras.from_dict(record)
            captured = np.asarray(cache.array(frames_array(name))[frame])
            plate = np.asarray(cache.array(clean_plate_array(name)), np.float32) / 255
            if (body := bodies[name]) is not None:  # the plate the U-Net gets at this frame: the body laid over it
                sway = torch.from_numpy(np.asarray(cache.array(torso_sway_array(name))[frame : frame + 1]))
                plate = body.plates(torch.from_numpy(plate).permute(2, 0, 1)[None], sway)[0].permute(1, 2, 0).numpy()
            landmarks = np.asarray(cache.array(landmark_array(name))[frame])
            with torch.no_grad():
                pixels, _ = camera.project_to_pixels(verts)
                image, mask = render_textured(mesh, verts, texture, camera, settings)
            i_orig = image[0].numpy() + (1 - mask[0].numpy()) * plate
            fitted = _wireframe(captured, pixels[0].numpy(), mesh.triangles.numpy(), landmarks)
            tiles = [_tile(captured), _tile(fitted), _tile((i_orig * 255).round().clip(0, 255).astype(np.uint8))]
            rows.append(np.concatenate(tiles, 1))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], 0)


def report_frames(cache: CaptureCache, count: int = GRID_FRAMES) -> list[int]:
    """Frames spread over training and the held-out test tail."""
    picks: list[int] = []
    for split in ("train", "test"):
        for sequence in cache.sequences_in(split):
            picks += np.linspace(sequence.first, sequence.last, count // 2 + 2)[1:-1].round().astype(int).tolist()
    return sorted(set(picks))


def write_report(cache: CaptureCache, folder: Path, mesh: Mesh, fit: FitResult, names: Sequence[str],
                 records: Sequence[CameraRecord]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    grid = frame_rows(cache, mesh, fit, names, records, report_frames(cache))
    cv2.imwrite(str(folder / "grid.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    (folder / "prepare.json").write_text(json.dumps(cache.manifest.meta.get("prepare", {}), indent=1))
    return folder
