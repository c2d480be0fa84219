"""Batched pinhole cameras in the OpenCV convention, and the one place that defines clip space.

Conventions (the rest of the project relies on them):

- World to camera: ``X_c = R @ X_w + t``; camera x right, y down, z forward (the camera looks along +z).
- Intrinsics ``K`` (3x3, pixels): ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]``. Continuous pixel coordinates
  have the image's top-left corner at (0, 0) and pixel (row i, column j) covers ``[j, j+1) x [i, i+1)``, so
  its centre is ``(j + 0.5, i + 0.5)``. (OpenCV's calibration puts centres at integers: add 0.5 to its
  cx, cy.) Image size is ``(width, height)``.
- Clip space (what the rasterizer consumes, nvdiffrast-style ``(x, y, z, w)``): ``w = z_c`` and
  ``x/w = 2 u / width - 1``, ``y/w = 2 v / height - 1`` for pixel coordinates ``(u, v)``, so NDC y = -1 is
  the image's top row (row 0); ``z/w`` is OpenGL depth, -1 at ``near`` and +1 at ``far``. Because NDC y
  grows downwards with the image rows, nvdiffrast's bottom-up memory order lands row 0 at the top and no
  backend needs to flip images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Cameras", "approximate_intrinsics", "broadcast_batch"]

FOCAL_PRIOR = 1.2  # focal length / longer side: COLMAP's default prior, about 45 degrees across the longer side


def approximate_intrinsics(width: int, height: int) -> list[list[float]]:
    """A pinhole guess for an uncalibrated camera: f = 1.2 max(W, H), principal point at the image centre.

    ``ingest`` (driving videos) and ``prepare`` (an actor without a calibration file) both start from it.
    """
    focal = FOCAL_PRIOR * max(width, height)
    return [[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]]


def broadcast_batch(b: int, c: int, what: str = "points") -> int:
    """The common batch size of ``b`` items and ``c`` cameras: equal, or one side of size 1."""
    if b == c or c == 1 or b == 1:
        return max(b, c)
    raise ValueError(f"cannot broadcast {b} {what} against {c} cameras: sizes must match or one must be 1")


def _expand(x: Tensor, n: int) -> Tensor:
    return x if x.shape[0] == n else x.expand(n, *x.shape[1:])


@dataclass(frozen=True)
class Cameras:
    """A batch of C pinhole cameras sharing one image size.

    Attributes:
        K: ``(C, 3, 3)`` intrinsics in pixels (pixel centres at integer + 0.5).
        R: ``(C, 3, 3)`` world-to-camera rotation.
        t: ``(C, 3)`` world-to-camera translation, ``X_c = R @ X_w + t``.
        width: image width in pixels.
        height: image height in pixels.
    """

    K: Tensor
    R: Tensor
    t: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        K, R, t = self.K, self.R, self.t
        if K.dim() == 2:  # a single camera: add the batch axis once, here
            object.__setattr__(self, "K", K := K.unsqueeze(0))
        if R.dim() == 2:
            object.__setattr__(self, "R", R := R.unsqueeze(0))
        if t.dim() == 1:
            object.__setattr__(self, "t", t := t.unsqueeze(0))
        c = K.shape[0]
        if K.shape != (c, 3, 3) or R.shape != (c, 3, 3) or t.shape != (c, 3):
            raise ValueError(
                f"cameras need K (C,3,3), R (C,3,3), t (C,3) with one C; got {tuple(K.shape)}, "
                f"{tuple(R.shape)}, {tuple(t.shape)}"
            )
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    def __len__(self) -> int:
        return self.K.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> Cameras:
        """A sub-batch; an integer keeps the batch axis (C = 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Cameras(self.K[index], self.R[index], self.t[index], self.width, self.height)

    @property
    def device(self) -> torch.device:
        return self.K.device

    @property
    def image_size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return self.width, self.height

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Cameras:
        return Cameras(
            self.K.to(device=device, dtype=dtype),
            self.R.to(device=device, dtype=dtype),
            self.t.to(device=device, dtype=dtype),
            self.width,
            self.height,
        )

    def resized(self, width: int, height: int) -> Cameras:
        """The same cameras for an image scaled to ``width x height`` (K's rows scale with the axes)."""
        scale = torch.tensor([width / self.width, height / self.height, 1.0], dtype=self.K.dtype)
        return Cameras(self.K * scale.to(self.K.device)[:, None], self.R, self.t, width, height)

    @property
    def centers(self) -> Tensor:
        """``(C, 3)`` camera centres in world space, ``-R^T t``."""
        return -(self.R.transpose(1, 2) @ self.t.unsqueeze(-1)).squeeze(-1)

    def world_to_camera(self, points: Tensor) -> Tensor:
        """``points (B, V, 3)`` in world space -> ``(N, V, 3)`` in camera space, ``N = max(B, C)``."""
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"points must be (B, V, 3), got {tuple(points.shape)}")
        n = broadcast_batch(points.shape[0], len(self))
        R = _expand(self.R.to(points.dtype), n)
        t = _expand(self.t.to(points.dtype), n)
        return _expand(points, n) @ R.transpose(1, 2) + t[:, None, :]

    def project_to_pixels(self, points: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
        """Pixel coordinates ``(N, V, 2)`` (x right, y down, centres at +0.5) and depth ``z_c (N, V)``.

        Points at or behind the camera plane get their depth (<= 0) and finite but meaningless pixels:
        callers mask them with ``depth > 0``.
        """
        xc = self.world_to_camera(points)  # (N, V, 3)
        z = xc[..., 2]
        safe_z = torch.where(z.abs() > eps, z, torch.full_like(z, eps))
        K = _expand(self.K.to(points.dtype), xc.shape[0])
        uvw = xc @ K.transpose(1, 2)  # (N, V, 3) = (z u, z v, z)
        return uvw[..., :2] / safe_z.unsqueeze(-1), z

    def projection_matrix(self, near: float, far: float) -> Tensor:
        """``(C, 4, 4)`` camera-to-clip matrix for the clip space described in this module's docstring."""
        if not 0 < near < far:
            raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
        K = self.K
        P = torch.zeros(len(self), 4, 4, dtype=K.dtype, device=K.device)
        P[:, 0, 0] = 2 * K[:, 0, 0] / self.width
        P[:, 0, 1] = 2 * K[:, 0, 1] / self.width
        P[:, 0, 2] = 2 * K[:, 0, 2] / self.width - 1
        P[:, 1, 1] = 2 * K[:, 1, 1] / self.height
        P[:, 1, 2] = 2 * K[:, 1, 2] / self.height - 1
        P[:, 2, 2] = (far + near) / (far - near)
        P[:, 2, 3] = -2 * far * near / (far - near)
        P[:, 3, 2] = 1
        return P

    def to_clip(self, points: Tensor, near: float = 0.01, far: float = 100.0) -> Tensor:
        """World ``points (B, V, 3)`` -> clip-space ``(N, V, 4)``, ready for ``Rasterizer.rasterize``."""
        xc = self.world_to_camera(points)  # (N, V, 3)
        P = _expand(self.projection_matrix(near, far).to(points.dtype), xc.shape[0])
        return xc @ P[:, :, :3].transpose(1, 2) + P[:, None, :, 3]

    @classmethod
    def look_at(
        cls,
        eye: Tensor | Sequence[float] | Sequence[Sequence[float]],
        target: Tensor | Sequence[float] | Sequence[Sequence[float]] = (0.0, 0.0, 0.0),
        up: Tensor | Sequence[float] = (0.0, -1.0, 0.0),
        *,
        width: int,
        height: int,
        focal: float | None = None,
        fov_degrees: float = 30.0,
        principal_point: tuple[float, float] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Cameras:
        """Cameras at ``eye (C, 3)`` looking at ``target``; ``up`` is the world direction that appears up.

        ``up`` defaults to world -y, the OpenCV habit (y down). ``focal`` (pixels, fx = fy) overrides
        ``fov_degrees``, the horizontal field of view. The principal point defaults to the image centre.
        """
        eye_t = torch.as_tensor(eye, dtype=dtype).reshape(-1, 3)
        target_t = torch.as_tensor(target, dtype=dtype).reshape(-1, 3).expand_as(eye_t)
        up_t = torch.as_tensor(up, dtype=dtype).reshape(-1, 3).expand_as(eye_t)
        z = torch.nn.functional.normalize(target_t - eye_t, dim=-1)  # forward
        x = torch.linalg.cross(-up_t, z)  # right = down x forward (x = y x z)
        if (x.norm(dim=-1) < 1e-8).any():
            raise ValueError("look_at: `up` is parallel to the viewing direction")
        x = torch.nn.functional.normalize(x, dim=-1)
        y = torch.linalg.cross(z, x)  # down = forward x right
        R = torch.stack([x, y, z], dim=1)  # rows are the camera axes in world space
        t = -(R @ eye_t.unsqueeze(-1)).squeeze(-1)
        if focal is None:
            focal = 0.5 * width / float(torch.tan(torch.deg2rad(torch.tensor(fov_degrees / 2))))
        cx, cy = principal_point if principal_point is not None else (width / 2, height / 2)
        K = torch.tensor([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]], dtype=dtype)
        return cls(K.expand(len(eye_t), 3, 3).clone(), R, t, width, height)

    @classmethod
    def from_dicts(cls, records: Sequence[Mapping[str, Any] | Any], dtype: torch.dtype = torch.float32) -> Cameras:
        """Cameras from capture-manifest records (mappings or dataclasses with K, R, t, width, height).

        Other keys (``name``) are ignored; all records must share one image size.
        """
        if not records:
            raise ValueError("from_dicts needs at least one camera record")
        rows = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r) for r in records]
        sizes = {(int(r["width"]), int(r["height"])) for r in rows}
        if len(sizes) != 1:
            raise ValueError(f"cameras in one batch must share an image size, got {sorted(sizes)}")
        (width, height) = sizes.pop()

        def stack(key: str) -> Tensor:
            return torch.stack([torch.as_tensor(r[key], dtype=dtype) for r in rows])

        return cls(stack("K"), stack("R"), stack("t"), width, height)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any] | Any, dtype: torch.dtype = torch.float32) -> Cameras:
        return cls.from_dicts([record], dtype=dtype)

    def as_dicts(self) -> list[dict[str, Any]]:
        """One plain-list record per camera (keys K, R, t, width, height), as in the capture manifest."""
        return [self.as_dict(i) for i in range(len(self))]

    def as_dict(self, index: int = 0) -> dict[str, Any]:
        """Camera ``index`` as a plain-list record (keys K, R, t, width, height)."""
        return {
            "K": self.K[index].detach().cpu().double().tolist(),
            "R": self.R[index].detach().cpu().double().tolist(),
            "t": self.t[index].detach().cpu().double().tolist(),
            "width": self.width,
            "height": self.height,
        }
