"""Per-frame dynamic UV textures (paper §4): the fitted mesh, rasterised in every camera, reads its colours there.

Each texel's colour in a frame is the mean over cameras weighted by visibility and viewing angle
(``render.extract_texture``'s weight, the cosine to the camera, squared so that frontal views win clearly).
Texels no camera sees well in this frame keep what they showed last (a running texture), blended in with a small
weight, so grazing views fade into the last good view instead of flickering; before a texel is first seen it
holds the capture's mean texture, computed from a sample of frames first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from avatar_lightning.render import Cameras, Mesh, RasterSettings, extract_texture, get_rasterizer

ANGLE_POWER = 2.0
CARRY_WEIGHT = 0.05  # the running texture's weight against a view's cos^2 (a view at ~77 degrees equals it)


def fuse_cameras(mesh: Mesh, vertices: Tensor, images: Sequence[Tensor], cameras: Sequence[Cameras],
                 size: int, settings: RasterSettings) -> tuple[Tensor, Tensor]:
    """``(B, T, T, 3)`` colours fused over cameras and their summed weights ``(B, T, T, 1)``.

    ``images[c] (B, H_c, W_c, 3)`` float in [0, 1]; ``cameras[c]`` one camera of that size.
    """
    rasterizer = get_rasterizer(settings.backend, vertices.device)
    total, weight_sum = None, None
    for image, camera in zip(images, cameras, strict=True):
        colour, weight = extract_texture(mesh, vertices, image, camera, size, settings, rasterizer)
        weight = weight.pow(ANGLE_POWER)
        total = colour * weight if total is None else total + colour * weight
        weight_sum = weight if weight_sum is None else weight_sum + weight
    assert total is not None and weight_sum is not None
    return total / weight_sum.clamp_min(1e-8), weight_sum


@dataclass
class RunningTexture:
    """The temporal fill: each frame's fused view blended with what every texel showed last."""

    last: Tensor  # (T, T, 3) float in [0, 1]
    seen: Tensor = field(init=False)  # (T, T) ever seen with weight > 0

    def __post_init__(self) -> None:
        self.seen = torch.zeros(self.last.shape[:2], dtype=torch.bool)

    def update(self, colour: Tensor, weight: Tensor) -> Tensor:
        """Frames ``colour (B, T, T, 3)`` with ``weight (B, T, T, 1)`` -> filled textures ``(B, T, T, 3)``, in order."""
        out = torch.empty_like(colour)
        for i in range(len(colour)):
            w = weight[i]
            self.last = (colour[i] * w + self.last * CARRY_WEIGHT) / (w + CARRY_WEIGHT)
            self.seen |= w[..., 0] > 0
            out[i] = self.last
        return out


def mean_texture(colours: Tensor, weights: Tensor) -> Tensor:
    """The weighted mean over frames ``(T, T, 3)`` of fused textures; never-seen texels get the mean colour."""
    total = weights.sum(0)
    mean = (colours * weights).sum(0) / total.clamp_min(1e-8)
    seen = total[..., 0] > 0
    if seen.any():
        mean[~seen] = mean[seen].mean(0)
    return mean


def to_uint8(textures: Tensor) -> np.ndarray:
    return (textures.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
