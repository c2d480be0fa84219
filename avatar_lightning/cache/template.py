"""The head template stored in a capture cache (or an avatar folder), as a render-ready :class:`Mesh`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from avatar_lightning.cache.layout import TEMPLATE_ARRAYS, template_array
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.render.mesh import Mesh


def mesh_from_arrays(arrays: Mapping[str, np.ndarray]) -> Mesh:
    """A :class:`Mesh` from the template's arrays by name (:data:`TEMPLATE_ARRAYS`; ``uv_triangles`` optional)."""
    tensors = {name: torch.from_numpy(np.asarray(value)) for name, value in arrays.items()}
    return Mesh(vertices=tensors["vertices"], triangles=tensors["triangles"], uvs=tensors["uvs"],
                uv_triangles=tensors.get("uv_triangles"), blend_basis=tensors["blend_basis"])


def template_arrays(cache: CaptureCache) -> dict[str, np.ndarray]:
    """The template arrays of the cache by name, in memory; a missing one (but the optional ``uv_triangles``) is a
    :class:`CacheError` naming the command that writes it."""
    return {name: cache.read(template_array(name)) for name in TEMPLATE_ARRAYS
            if name != "uv_triangles" or cache.has(template_array(name))}


def load_template(cache: CaptureCache) -> Mesh:
    """Vertices, triangles, UVs (with UV seams if stored) and the blend-shape basis of the cache's actor."""
    return mesh_from_arrays(template_arrays(cache))


def write_template(cache: CaptureCache, arrays: Mapping[str, np.ndarray], stage: str) -> None:
    """Write the template arrays by name (:data:`TEMPLATE_ARRAYS`) into the cache; ``stage`` is who made them."""
    for name in TEMPLATE_ARRAYS:
        if name in arrays:
            cache.write_array(template_array(name), np.asarray(arrays[name]), stage=stage)
