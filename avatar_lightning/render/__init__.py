"""Rendering: cameras, meshes, the rasterizer primitives (pure PyTorch, or nvdiffrast on CUDA), texturing, and
the image formation model of paper §4 (``compose``: I_out = α I_orig + β I_corr + γ I_backg).

Conventions (OpenCV cameras, clip space, image and texture layouts) are set out in ``cameras.py``,
``mesh.py`` and ``rasterizer.py``.
"""

from .cameras import Cameras, broadcast_batch
from .mesh import Mesh, axis_angle_to_matrix, ellipsoid_mesh, face_normals, plane_mesh, vertex_normals
from .rasterizer import (
    Backend,
    Rasterizer,
    RasterOutput,
    RasterSettings,
    get_rasterizer,
    nvdiffrast_available,
)
from .textured import extract_texture, fuse_views, render_textured, uv_to_clip

__all__ = [
    "Backend",
    "Cameras",
    "Mesh",
    "RasterOutput",
    "RasterSettings",
    "Rasterizer",
    "axis_angle_to_matrix",
    "broadcast_batch",
    "ellipsoid_mesh",
    "extract_texture",
    "face_normals",
    "fuse_views",
    "get_rasterizer",
    "nvdiffrast_available",
    "plane_mesh",
    "render_textured",
    "uv_to_clip",
    "vertex_normals",
]
