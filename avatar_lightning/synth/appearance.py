"""Expression-dependent UV textures, as a real capture's dynamic texture is.

A frame's texture is the photo's face plus what changes with expression: the mouth interior (cavity, teeth,
tongue) in its own island, eyelids painted over the eyes as they close, wrinkles (nasolabial folds with a
smile, forehead lines with raised brows, a frown line between lowered brows, crow's feet), and blush with a
smile or puffed cheeks. Every term is a fixed map times a function of the blend weights, vectorised over
frames, so the head VAE has real texture variation to learn and it is cheap to make.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar_lightning.synth import face as F
from avatar_lightning.synth.blendshapes import BLEND_SHAPE_NAMES


def _distance_to_polyline(grid: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(T, T)`` distance of each texel centre (``grid (T, T, 2)``, uv) to the polyline through ``points``."""
    a, b = points[:-1], points[1:]
    ab = b - a
    ap = grid[:, :, None, :] - a  # (T, T, S, 2)
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    closest = a + t[..., None] * ab
    return np.sqrt(((grid[:, :, None, :] - closest) ** 2).sum(-1)).min(-1)


def _line_map(grid: np.ndarray, points: np.ndarray, width: float) -> np.ndarray:
    return np.exp(-0.5 * (_distance_to_polyline(grid, points) / width) ** 2)


def _polygon_mask(size: int, polygon_uv: np.ndarray, blur: float = 0.6) -> np.ndarray:
    mask = np.zeros((size, size), np.float32)
    cv2.fillPoly(mask, [np.round(polygon_uv * size * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=4)
    return cv2.GaussianBlur(mask, (0, 0), blur) if blur > 0 else mask


@dataclass(frozen=True)
class TextureModel:
    """Precomputed maps at one texture size; :meth:`render` makes ``(N, T, T, 3)`` textures from weights."""

    base: np.ndarray  # (T, T, 3) float32 in [0, 1]
    lid_colour: np.ndarray  # (3,)
    eye_masks: dict[str, np.ndarray]  # side -> (T, T) eye opening in the photo
    eye_rows: dict[str, tuple[float, float]]  # side -> (top v, bottom v) of the eye in texels
    island: tuple[int, int, int, int]  # texel rectangle of the mouth island
    wrinkles: dict[str, np.ndarray]  # name -> (T, T) darkening map in [0, 1]
    blush: dict[str, np.ndarray]  # side -> (T, T)
    mouth_colours: dict[str, np.ndarray]

    @property
    def size(self) -> int:
        return self.base.shape[0]

    def render(self, weights: np.ndarray) -> np.ndarray:
        """``weights (N, K)`` -> textures ``(N, T, T, 3)`` float32 in [0, 1]."""
        w = {name: weights[:, k][:, None, None] for k, name in enumerate(BLEND_SHAPE_NAMES)}
        tex = np.broadcast_to(self.base, (len(weights), *self.base.shape)).copy()
        shade = (
            0.35 * (w["smile_left"] * self.wrinkles["fold_left"] + w["smile_right"] * self.wrinkles["fold_right"])
            + 0.30 * (w["smile_left"] * self.wrinkles["crow_left"] + w["smile_right"] * self.wrinkles["crow_right"])
            + 0.30 * 0.5 * (w["brow_up_left"] + w["brow_up_right"]) * self.wrinkles["forehead"]
            + 0.40 * w["brow_down"] * self.wrinkles["glabella"]
            + 0.20 * w["pucker"] * self.wrinkles["pucker"]
        )
        tex *= 1.0 - np.clip(shade, 0, 0.8)[..., None]
        for side in ("left", "right"):
            redness = np.clip(0.5 * w[f"smile_{side}"] + 0.6 * w["cheek_puff"], 0, 1) * self.blush[side]
            tex += redness[..., None] * np.array([0.10, -0.02, -0.02], np.float32)
        self._paint_eyelids(tex, w)
        self._paint_mouth(tex, weights)
        return np.clip(tex, 0.0, 1.0)

    def _paint_eyelids(self, tex: np.ndarray, w: dict[str, np.ndarray]) -> None:
        rows = np.arange(self.size, dtype=np.float32)[None, :, None] + 0.5  # (1, T, 1)
        for side in ("left", "right"):
            top, bottom = self.eye_rows[side]
            lid_edge = top + w[f"blink_{side}"] * (bottom - top) * 1.05  # (N, 1, 1)
            covered = np.clip(lid_edge - rows + 0.5, 0, 1) * self.eye_masks[side]  # (N, T, T)
            tex += covered[..., None] * (self.lid_colour - tex)

    def _paint_mouth(self, tex: np.ndarray, weights: np.ndarray) -> None:
        """Cavity, teeth and tongue in the island; teeth keep their size as the opening stretches the island."""
        u0, v0, u1, v1 = self.island
        n, height, width = len(weights), v1 - v0, u1 - u0
        jaw = weights[:, BLEND_SHAPE_NAMES.index("jaw_open")]
        smile = 0.5 * (
            weights[:, BLEND_SHAPE_NAMES.index("smile_left")] + weights[:, BLEND_SHAPE_NAMES.index("smile_right")]
        )
        funnel = weights[:, BLEND_SHAPE_NAMES.index("funnel")]
        opening = 0.15 + jaw + 0.3 * funnel  # how far the island is stretched on screen, relative
        y = (np.arange(height, dtype=np.float32) + 0.5) / height  # 0 at the upper lip
        x = (np.arange(width, dtype=np.float32) + 0.5) / width
        upper_teeth = np.clip(0.16 * (1 + smile) / opening, 0.05, 0.48)[:, None, None]
        lower_teeth = np.clip(0.10 / opening, 0.03, 0.35)[:, None, None]
        arch = 0.25 * (2 * x[None, None, :] - 1) ** 2  # teeth follow the dental arch towards the corners
        yy = y[None, :, None]
        c = self.mouth_colours
        depth = np.clip(1 - 4 * (yy - 0.5) ** 2, 0, 1)  # darker in the middle of the cavity
        region = c["cavity"] * (1 - 0.6 * depth[..., None]) * np.ones((n, height, width, 1), np.float32)
        tongue = np.clip((yy - 0.62) / 0.12, 0, 1) * np.clip(1 - np.abs(2 * x[None, None, :] - 1) / 0.8, 0, 1)
        region += (tongue * jaw[:, None, None])[..., None] * (c["tongue"] - region)
        upper = np.clip((upper_teeth + arch * upper_teeth - yy) * height, 0, 1)
        lower = np.clip((yy - (1 - lower_teeth - arch * lower_teeth)) * height, 0, 1)
        region += upper[..., None] * (c["teeth"] - region)
        region += lower[..., None] * (c["teeth"] * 0.92 - region)
        tex[:, v0:v1, u0:u1] = region


def build_texture_model(
    template: F.FaceTemplate, photo: F.FacePhoto, size: int, tint: np.ndarray | None = None
) -> TextureModel:
    """Crop the photo to the template's UV square, resize to ``size`` and precompute every map.

    ``tint`` (3,) multiplies skin colours: other identities get other complexions.
    """
    x0, y0, crop = template.crop
    padded = cv2.copyMakeBorder(photo.image, crop, crop, crop, crop, cv2.BORDER_REFLECT)
    square = padded[y0 + crop : y0 + 2 * crop, x0 + crop : x0 + 2 * crop]
    base = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    if tint is not None:
        base = np.clip(base * tint[None, None, :], 0, 1)
    uv = template.uvs[: F.NUM_LANDMARKS]
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    grid = np.stack(np.meshgrid(coords, coords, indexing="xy"), -1)  # (T, T, 2) uv of texel centres

    def colour_at(indices: tuple[int, ...]) -> np.ndarray:
        pts = np.clip((uv[list(indices)] * size).astype(int), 0, size - 1)
        return base[pts[:, 1], pts[:, 0]].mean(0)

    lid_colour = colour_at((27, 28, 257, 258, 56, 286))  # skin between brows and upper lids
    eye_masks, eye_rows = {}, {}
    for side, loop in F.EYE_LOOPS.items():
        eye_masks[side] = _polygon_mask(size, uv[list(loop)], blur=0.5)
        rows = uv[list(loop), 1] * size
        eye_rows[side] = (float(rows.min()), float(rows.max()))
    width = 0.006  # line half-width in uv units: about a millimetre on the face
    wrinkles = {}
    for side in ("left", "right"):
        wing, corner = uv[F.NOSE_WINGS[side]], uv[F.MOUTH_CORNERS[side][0]]
        outward = np.array([1.0 if side == "left" else -1.0, 0.0]) * 0.02  # away from the nose
        fold = np.stack([wing + outward * 0.5, (wing + corner) / 2 + outward, corner + outward * 0.8])
        wrinkles[f"fold_{side}"] = _line_map(grid, fold, width)
        outer = uv[263 if side == "left" else 33]
        direction = 1.0 if side == "left" else -1.0
        crow = [
            np.stack([outer + [0.01 * direction, dy], outer + [0.035 * direction, dy * 2.2]])
            for dy in (-0.012, 0, 0.012)
        ]
        wrinkles[f"crow_{side}"] = np.maximum.reduce([_line_map(grid, c, width * 0.7) for c in crow])
    brow_top = min(uv[list(F.BROWS["left"]), 1].min(), uv[list(F.BROWS["right"]), 1].min())
    forehead_x = np.linspace(uv[70, 0], uv[300, 0], 9)
    lines = []
    for k in range(3):
        v_line = brow_top - 0.03 - 0.028 * k + 0.008 * np.cos(np.linspace(-1.2, 1.2, 9)) ** 2
        lines.append(_line_map(grid, np.stack([forehead_x, v_line], 1), width))
    wrinkles["forehead"] = np.maximum.reduce(lines)
    between = (uv[107] + uv[336]) / 2
    wrinkles["glabella"] = np.maximum(
        _line_map(grid, np.stack([between + [-0.012, 0.0], between + [-0.009, -0.045]]), width * 0.8),
        _line_map(grid, np.stack([between + [0.012, 0.0], between + [0.009, -0.045]]), width * 0.8),
    )
    upper_lip_outline = uv[[61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]]
    wrinkles["pucker"] = _line_map(grid, upper_lip_outline + [0.0, -0.012], width * 0.8)
    blush = {
        side: np.exp(-0.5 * (np.linalg.norm(grid - uv[F.CHEEKS[side][0]], axis=-1) / 0.05) ** 2)
        for side in ("left", "right")
    }
    u0, v0, u1, v1 = (int(round(c * size)) for c in F.MOUTH_ISLAND)
    mouth_colours = {
        "cavity": np.array([0.32, 0.07, 0.08], np.float32),
        "tongue": np.array([0.72, 0.33, 0.35], np.float32),
        "teeth": np.array([0.93, 0.91, 0.84], np.float32),
    }
    return TextureModel(
        base=base.astype(np.float32),
        lid_colour=lid_colour.astype(np.float32),
        eye_masks=eye_masks,
        eye_rows=eye_rows,
        island=(u0, v0, u1, v1),
        wrinkles={k: m.astype(np.float32) for k, m in wrinkles.items()},
        blush={k: m.astype(np.float32) for k, m in blush.items()},
        mouth_colours=mouth_colours,
    )
