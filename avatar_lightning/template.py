"""The head template stored in a capture cache, as a render-ready :class:`~avatar_lightning.render.Mesh`."""

from __future__ import annotations

import torch

from avatar_lightning.cache import CaptureCache
from avatar_lightning.render import Mesh

TEMPLATE_ARRAYS = ("vertices", "triangles", "uvs", "blend_basis")


def load_template(cache: CaptureCache) -> Mesh:
    """Vertices, triangles, UVs (with UV seams if stored) and the blend-shape basis of the cache's actor."""
    arrays = {name: torch.from_numpy(cache.read(f"template/{name}")) for name in TEMPLATE_ARRAYS}
    uv_triangles = torch.from_numpy(cache.read("template/uv_triangles")) if cache.has("template/uv_triangles") else None
    return Mesh(vertices=arrays["vertices"], triangles=arrays["triangles"], uvs=arrays["uvs"],
                uv_triangles=uv_triangles, blend_basis=arrays["blend_basis"])
