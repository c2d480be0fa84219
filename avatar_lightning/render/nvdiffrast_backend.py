"""nvdiffrast backend (CUDA): the only module that imports nvdiffrast, and only when constructed.

Layouts need no conversion: nvdiffrast stores images bottom-up, i.e. row 0 is NDC y = -1, and our clip space
(``cameras.py``) puts NDC y = -1 at the top of the image, so its row 0 is our row 0. Textures likewise: its
t = 0 is memory row 0, our v = 0. Its ``rast`` channels (u, v, z/w, triangle_id + 1) are ours.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .rasterizer import (
    Rasterizer,
    RasterOutput,
    check_interpolate_inputs,
    check_raster_inputs,
    check_texture_inputs,
)

__all__ = ["NvdiffrastRasterizer"]


def _import_nvdiffrast() -> Any:
    try:
        import nvdiffrast.torch as dr
    except Exception as err:  # an ImportError, or its CUDA extension failing to build/load
        raise RuntimeError(f"nvdiffrast is not usable here ({err}); use the torch backend") from err
    return dr


def _finite(pos: Tensor) -> Tensor:
    """float32 contiguous ``pos`` with non-finite vertices moved behind the camera (w = -1).

    nvdiffrast does not specify what NaN does; behind the camera its clipper removes the vertex, so such
    triangles cover nothing (or, clipped, only a part near their valid vertices) and no NaN comes out.
    """
    pos32 = pos.float()
    bad = ~torch.isfinite(pos32).all(-1, keepdim=True)
    behind = torch.tensor([0.0, 0.0, 0.0, -1.0], device=pos32.device)
    return torch.where(bad, behind, pos32).contiguous()


class NvdiffrastRasterizer(Rasterizer):
    """nvdiffrast's ``RasterizeCudaContext`` primitives (float32, CUDA tensors)."""

    name = "nvdiffrast"

    def __init__(self, device: torch.device | str | None = None) -> None:
        device = torch.device(device if device is not None else "cuda")
        if device.type != "cuda":
            raise RuntimeError(f"the nvdiffrast backend needs a CUDA device, got {device}")
        self._dr = _import_nvdiffrast()
        self.device = device
        self._ctx = self._dr.RasterizeCudaContext(device=device)

    def _check_device(self, *tensors: Tensor) -> None:
        for x in tensors:
            if x.device.type != "cuda":
                raise ValueError(f"the nvdiffrast backend needs CUDA tensors, got one on {x.device}")

    def rasterize(self, pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> RasterOutput:
        check_raster_inputs(pos, tri, resolution)
        self._check_device(pos)
        b, h, w = pos.shape[0], int(resolution[0]), int(resolution[1])
        if tri.shape[0] == 0:  # nvdiffrast wants at least one triangle
            return RasterOutput(pos.new_zeros(b, h, w, 4, dtype=torch.float32))
        rast, _ = self._dr.rasterize(self._ctx, _finite(pos), tri.int().contiguous(), resolution=[h, w], grad_db=False)
        return RasterOutput(rast)

    def interpolate(self, attr: Tensor, raster: RasterOutput, tri: Tensor) -> Tensor:
        attr = check_interpolate_inputs(attr, raster, tri)
        self._check_device(attr, raster.rast)
        out, _ = self._dr.interpolate(attr.float().contiguous(), raster.rast.contiguous(), tri.int().contiguous())
        return out

    def texture(self, tex: Tensor, uv: Tensor) -> Tensor:
        check_texture_inputs(tex, uv)
        self._check_device(tex, uv)
        uv = torch.nan_to_num(uv.float())
        return self._dr.texture(tex.float().contiguous(), uv.contiguous(), filter_mode="linear", boundary_mode="clamp")

    def antialias(self, color: Tensor, raster: RasterOutput, pos: Tensor, tri: Tensor) -> Tensor:
        check_raster_inputs(pos, tri)
        self._check_device(color, pos)
        if tri.shape[0] == 0:
            return color
        return self._dr.antialias(
            color.float().contiguous(), raster.rast.contiguous(), _finite(pos), tri.int().contiguous()
        )
