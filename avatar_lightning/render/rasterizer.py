"""The rasterizer interface (nvdiffrast's four primitives), its settings and output, and backend choice.

Backends: ``torch`` (``torch_backend.py``; CPU and CUDA, the reference) and ``nvdiffrast``
(``nvdiffrast_backend.py``; CUDA, imported lazily). Both take clip-space positions as produced by
``Cameras.to_clip`` and return images with row 0 at the top (see ``cameras.py`` for why no flip is needed).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Backend",
    "RasterOutput",
    "RasterSettings",
    "Rasterizer",
    "check_raster_inputs",
    "get_rasterizer",
    "nvdiffrast_available",
]

Backend = Literal["auto", "torch", "nvdiffrast"]


@dataclass
class RasterSettings:
    """How a mesh is rendered.

    Attributes:
        image_size: ``(width, height)`` of the rendered image; None renders at the cameras' own size
            (otherwise the cameras are rescaled to it).
        backend: ``torch``, ``nvdiffrast`` (CUDA only), or ``auto``: nvdiffrast where it imports and the
            data is on CUDA, else torch.
        near: near clipping distance along the camera's z (world units); nearer surface is not drawn.
        far: far clipping distance.
        antialias: smooth silhouette edges (nvdiffrast's ``antialias``: analytic, differentiable with
            respect to vertex positions). Off by default: it costs a pass over all edge pixels.
    """

    image_size: tuple[int, int] | None = None
    backend: Backend = "auto"
    near: float = 0.01
    far: float = 100.0
    antialias: bool = False

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "torch", "nvdiffrast"):
            raise ValueError(f"backend must be auto, torch or nvdiffrast, got {self.backend!r}")
        if not 0 < self.near < self.far:
            raise ValueError(f"need 0 < near < far, got near={self.near}, far={self.far}")
        if self.image_size is not None:
            self.image_size = (int(self.image_size[0]), int(self.image_size[1]))


@dataclass(frozen=True)
class RasterOutput:
    """What ``rasterize`` returns; nvdiffrast's ``rast`` plus named views of its channels.

    Attributes:
        rast: ``(B, H, W, 4)`` per pixel ``(u, v, z/w, triangle_id + 1)``, 0 everywhere on empty pixels;
            row 0 is the top of the image. ``(u, v)`` are perspective-correct barycentrics of the
            triangle's first and second vertex (the third gets ``1 - u - v``), differentiable with
            respect to the clip-space positions; ``z/w`` is NDC depth in [-1, 1] (no gradient).
        pixels: optional ``(N,)`` int64 indices into the flattened ``B*H*W`` of the covered pixels, and
        faces: their ``(N,)`` triangle indices; a sparse view the torch backend fills so that
            ``interpolate`` skips a pass over all pixels. Derived from ``rast`` when absent.
    """

    rast: Tensor
    pixels: Tensor | None = None
    faces: Tensor | None = None

    def covered(self) -> tuple[Tensor, Tensor]:
        """``(pixels (N,), faces (N,))``: flattened indices of the covered pixels and their triangles."""
        if self.pixels is not None and self.faces is not None:
            return self.pixels, self.faces
        face = self.triangle_id.reshape(-1)
        pixels = (face >= 0).nonzero().squeeze(1)
        return pixels, face.index_select(0, pixels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(B, H, W)``."""
        b, h, w, _ = self.rast.shape
        return b, h, w

    @property
    def triangle_id(self) -> Tensor:
        """``(B, H, W)`` int64 index of the visible triangle, -1 where empty."""
        return self.rast[..., 3].detach().round().long() - 1

    @property
    def mask(self) -> Tensor:
        """``(B, H, W, 1)`` 1 where a triangle is visible, else 0 (rast's dtype)."""
        return (self.rast[..., 3:4] > 0).to(self.rast.dtype)

    @property
    def barycentrics(self) -> Tensor:
        """``(B, H, W, 3)`` weights of the triangle's three vertices (0 where empty)."""
        u, v = self.rast[..., 0], self.rast[..., 1]
        covered = self.rast[..., 3] > 0
        return torch.stack([u, v, torch.where(covered, 1 - u - v, torch.zeros_like(u))], dim=-1)

    @property
    def depth(self) -> Tensor:
        """``(B, H, W, 1)`` NDC depth z/w (0 where empty: use ``mask``)."""
        return self.rast[..., 2:3]


def check_raster_inputs(pos: Tensor, tri: Tensor, resolution: tuple[int, int] | None = None) -> None:
    """Raise a clear error for malformed rasterizer inputs (shared by the backends)."""
    if pos.dim() != 3 or pos.shape[-1] != 4:
        raise ValueError(f"pos must be clip-space (B, V, 4), got {tuple(pos.shape)}")
    if not pos.dtype.is_floating_point:
        raise ValueError(f"pos must be floating point, got {pos.dtype}")
    if tri.dim() != 2 or tri.shape[-1] != 3 or tri.dtype.is_floating_point:
        raise ValueError(f"tri must be integer (F, 3), got {tuple(tri.shape)} {tri.dtype}")
    if tri.numel() and (int(tri.min()) < 0 or int(tri.max()) >= pos.shape[1]):
        raise ValueError(f"tri indices must lie in [0, {pos.shape[1]}) (the number of vertices in pos)")
    if tri.device != pos.device:
        raise ValueError(f"pos is on {pos.device} but tri on {tri.device}")
    if resolution is not None:
        if len(resolution) != 2 or int(resolution[0]) <= 0 or int(resolution[1]) <= 0:
            raise ValueError(f"resolution must be positive (height, width), got {resolution}")


class Rasterizer(ABC):
    """nvdiffrast's primitives behind one interface. Images are channels-last ``(B, H, W, C)``, row 0 top."""

    name: str = "abstract"

    @abstractmethod
    def rasterize(self, pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> RasterOutput:
        """Visible triangle, barycentrics and depth per pixel centre.

        Args:
            pos: ``(B, V, 4)`` clip-space positions (``Cameras.to_clip``).
            tri: ``(F, 3)`` integer vertex indices, shared by the batch.
            resolution: ``(height, width)`` in pixels (nvdiffrast's order).
        """

    @abstractmethod
    def interpolate(self, attr: Tensor, raster: RasterOutput, tri: Tensor) -> Tensor:
        """``(B, H, W, C)`` perspective-correct vertex attributes ``attr (B|1, V, C)`` or ``(V, C)``.

        0 on empty pixels; differentiable with respect to ``attr`` and (through ``raster``) positions.
        ``tri`` may differ from the rasterized one (e.g. UV triangles) but must index the same faces.
        """

    @abstractmethod
    def texture(self, tex: Tensor, uv: Tensor) -> Tensor:
        """Bilinear lookup of ``tex (B|1, H_t, W_t, C)`` at ``uv (B, H, W, 2)`` -> ``(B, H, W, C)``.

        u in [0, 1] spans the width, v the height with v = 0 at texture row 0; texel centres at
        ``(i + 0.5) / size``; clamped at the borders. Differentiable with respect to ``tex`` and ``uv``.
        """

    @abstractmethod
    def antialias(self, color: Tensor, raster: RasterOutput, pos: Tensor, tri: Tensor) -> Tensor:
        """``color (B, H, W, C)`` with silhouette edges blended by their analytic coverage."""


def check_interpolate_inputs(attr: Tensor, raster: RasterOutput, tri: Tensor) -> Tensor:
    """``attr`` as ``(B|1, V, C)``; raises on shapes that cannot match."""
    if attr.dim() == 2:
        attr = attr.unsqueeze(0)
    if attr.dim() != 3:
        raise ValueError(f"attr must be (B, V, C) or (V, C), got {tuple(attr.shape)}")
    b = raster.rast.shape[0]
    if attr.shape[0] not in (1, b):
        raise ValueError(f"attr batch {attr.shape[0]} does not match the raster batch {b}")
    if tri.dim() != 2 or tri.shape[-1] != 3:
        raise ValueError(f"tri must be (F, 3), got {tuple(tri.shape)}")
    if tri.numel() and int(tri.max()) >= attr.shape[1]:
        raise ValueError(f"tri indexes past the {attr.shape[1]} attribute rows")
    return attr


def check_texture_inputs(tex: Tensor, uv: Tensor) -> None:
    if tex.dim() != 4:
        raise ValueError(f"tex must be (B, H_t, W_t, C), got {tuple(tex.shape)}")
    if uv.dim() != 4 or uv.shape[-1] != 2:
        raise ValueError(f"uv must be (B, H, W, 2), got {tuple(uv.shape)}")
    if tex.shape[0] not in (1, uv.shape[0]):
        raise ValueError(f"texture batch {tex.shape[0]} does not match the uv batch {uv.shape[0]}")


@functools.cache
def nvdiffrast_available() -> bool:
    """True when ``nvdiffrast.torch`` imports and CUDA is present."""
    if not torch.cuda.is_available():
        return False
    try:
        import nvdiffrast.torch  # noqa: F401
    except Exception:  # ImportError, or a failed extension build
        return False
    return True


@functools.cache
def _cached_rasterizer(backend: str, device: torch.device) -> Rasterizer:
    if backend == "nvdiffrast":
        from .nvdiffrast_backend import NvdiffrastRasterizer

        return NvdiffrastRasterizer(device)
    from .torch_backend import TorchRasterizer

    return TorchRasterizer()


def get_rasterizer(backend: Backend = "auto", device: torch.device | str | None = None) -> Rasterizer:
    """The rasterizer for ``backend`` on ``device`` (cached: nvdiffrast contexts are costly).

    ``auto`` picks nvdiffrast for a CUDA device where it imports, else torch; asking for nvdiffrast where
    it cannot run raises with the reason.
    """
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    if backend == "auto":
        backend = "nvdiffrast" if device.type == "cuda" and nvdiffrast_available() else "torch"
    if backend == "nvdiffrast":
        if device.type != "cuda":
            raise RuntimeError(f"the nvdiffrast backend needs a CUDA device, got {device}")
        if not nvdiffrast_available():
            raise RuntimeError(
                "the nvdiffrast backend was asked for but `nvdiffrast.torch` does not import here "
                "(install nvdiffrast from its repository) — use backend: torch or auto"
            )
    elif backend != "torch":
        raise ValueError(f"backend must be auto, torch or nvdiffrast, got {backend!r}")
    return _cached_rasterizer(backend, device)
