"""The plate under the U-Net at one frame: the clean plate with the body plate laid over it, moved by the torso's sway.

``prepare`` estimates, per camera, the torso's sway in every frame, the body at zero sway and where it is body
(:mod:`avatar_lightning.capture.body_plate`). Training, ``evaluate`` and ``animate`` build each frame's I_backg of
equation 1 here, so all three composite over the same thing; a capture without a body plate (a synthetic actor, a
face filling the frame) keeps its one clean plate.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avatar_lightning.cache.layout import body_arrays
from avatar_lightning.errors import CacheError

if TYPE_CHECKING:
    from avatar_lightning.cache.store import CaptureCache


WINDOW_MARGIN = 8  # pixels of sway beyond the capture's range that the body's window still holds


@dataclass
class BodyLayer:
    """One camera's body plate.

    Attributes:
        plate: ``(1, 3, H, W)`` float in [0, 1], the body at zero sway.
        mask: ``(1, 1, H, W)`` float in [0, 1], where it is body.
        from_pose: ``(7, 2)`` ``W`` with ``[pose, 1] @ W`` the sway a head pose goes with (for animation, where no
            torso is tracked).
        low, high: ``(2,)`` the sway's range over the capture's training frames; a sway from a pose is clipped to it
            (a driver's extreme pose must not throw the torso off the frame).
    """

    plate: Tensor
    mask: Tensor
    from_pose: Tensor
    low: Tensor
    high: Tensor

    @classmethod
    def from_arrays(cls, plate: np.ndarray, mask: np.ndarray, from_pose: np.ndarray, sway_range: np.ndarray
                    ) -> BodyLayer:
        """``plate (H, W, 3) uint8``, ``mask (H, W) uint8``, ``from_pose (7, 2)``, ``sway_range (2, 2)`` (low, high)."""
        if plate.shape[:2] != mask.shape or plate.shape[-1] != 3:
            raise ValueError(f"body plate {plate.shape} and mask {mask.shape} must be (H, W, 3) and (H, W)")
        if np.asarray(from_pose).shape != (7, 2) or np.asarray(sway_range).shape != (2, 2):
            raise ValueError(f"sway from pose must be (7, 2) and its range (2, 2), got {np.shape(from_pose)} and "
                             f"{np.shape(sway_range)}")
        image = torch.from_numpy(np.ascontiguousarray(plate)).permute(2, 0, 1)[None].float() / 255
        weight = torch.from_numpy(np.ascontiguousarray(mask))[None, None].float() / 255
        span = torch.as_tensor(np.asarray(sway_range, np.float32))
        return cls(image, weight, torch.as_tensor(np.asarray(from_pose, np.float32)), span[0], span[1])

    def to(self, device: torch.device) -> BodyLayer:
        return BodyLayer(*(t.to(device) for t in (self.plate, self.mask, self.from_pose, self.low, self.high)))

    def sway_from_pose(self, poses: Tensor) -> Tensor:
        """``(B, 6)`` head poses -> ``(B, 2)`` sways, within the training range."""
        ones = torch.ones(len(poses), 1, dtype=self.from_pose.dtype, device=poses.device)
        sway = torch.cat([poses.to(self.from_pose.dtype), ones], dim=1) @ self.from_pose.to(poses.device)
        return torch.maximum(torch.minimum(sway, self.high.to(sway.device)), self.low.to(sway.device))

    def plates(self, clean_plate: Tensor, sways: Tensor) -> Tensor:
        """``(B, 3, H, W)``: ``clean_plate (1|B, 3, H, W)`` with this body moved by ``sways (B, 2)`` over it.

        Only the body's window is resampled (the mask's extent, widened by the sway's range and a margin): the
        rest of the frame is the clean plate, whatever the sway. On the shared anchor the body covers the bottom
        third of the frame, so this is a third of the work of :func:`frame_plates` over the whole frame, which
        it equals for sways up to :data:`WINDOW_MARGIN` pixels beyond the capture's range.
        """
        top, bottom, left, right = self.window
        window = (..., slice(top, bottom), slice(left, right))
        out = clean_plate.expand(len(sways), -1, -1, -1).clone()
        if bottom <= top:  # no body at all
            return out
        out[window] = frame_plates(clean_plate[window], self.plate.to(sways.device)[window],
                                   self.mask.to(sways.device)[window], sways)
        return out

    @cached_property
    def window(self) -> tuple[int, int, int, int]:
        """``top, bottom, left, right`` (end exclusive): where a body swaying within its range may lie (found once:
        :meth:`plates` runs per frame in training and animation)."""
        rows, cols = torch.nonzero(self.mask[0, 0] > 0, as_tuple=True)
        height, width = self.mask.shape[-2:]
        if not len(rows):
            return 0, 0, 0, 0
        reach = int(np.ceil(float(torch.maximum(self.low.abs(), self.high.abs()).max()))) + WINDOW_MARGIN
        return (max(int(rows.min()) - reach, 0), min(int(rows.max()) + 1 + reach, height),
                max(int(cols.min()) - reach, 0), min(int(cols.max()) + 1 + reach, width))


def translate(images: Tensor, shifts: Tensor) -> Tensor:
    """``images (1|B, C, H, W)`` moved by ``shifts (B, 2)`` pixels (x right, y down), bilinear; what moves in from
    outside the image repeats its edge (``cv2.BORDER_REPLICATE``, as ``prepare`` stabilised the frames)."""
    count, (height, width) = len(shifts), images.shape[-2:]
    # the output pixel (x, y) samples the input at (x - dx, y - dy); grid_sample's [-1, 1] spans pixel centres
    # with align_corners=True, so one pixel is 2 / (side - 1)
    theta = torch.zeros(count, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = -shifts[:, 0].to(images.dtype) * 2 / max(width - 1, 1)
    theta[:, 1, 2] = -shifts[:, 1].to(images.dtype) * 2 / max(height - 1, 1)
    grid = F.affine_grid(theta, [count, images.shape[1], height, width], align_corners=True)
    return F.grid_sample(images.expand(count, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                         align_corners=True)


def frame_plates(clean_plate: Tensor, body: Tensor, mask: Tensor, sways: Tensor) -> Tensor:
    """``(B, 3, H, W)`` per-frame plates: ``body (1, 3, H, W)`` and its ``mask (1, 1, H, W)`` moved by ``sways
    (B, 2)`` and laid over ``clean_plate (1|B, 3, H, W)``."""
    moved = translate(torch.cat([body, mask], dim=1), sways)
    weight = moved[:, 3:]
    return weight * moved[:, :3] + (1 - weight) * clean_plate


def read_body_layer(cache: CaptureCache, camera: str) -> BodyLayer | None:
    """``camera``'s body plate from a capture cache, or None where ``prepare`` made none (or an older cache)."""
    names = body_arrays(camera)
    present = [cache.has(name) for name in names]
    if not any(present):
        return None
    if not all(present):
        missing = [n for n, p in zip(names, present, strict=True) if not p]
        raise CacheError(f"{cache.root}: camera {camera}'s body plate is incomplete (missing {missing}); run "
                         "`python -m avatar_lightning prepare` again")
    plate, mask, sway_name, from_pose = names
    sways = np.asarray(cache.array(sway_name), np.float32)
    train = cache.rows_in("train")
    seen = sways[train] if len(train) else sways
    return BodyLayer.from_arrays(cache.read(plate), cache.read(mask), cache.read(from_pose),
                                 np.stack([seen.min(0), seen.max(0)]))
