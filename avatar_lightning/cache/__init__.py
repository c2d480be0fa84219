"""The capture cache: the one on-disk data contract every stage reads and writes.

A cache is a folder of ``.npy`` arrays plus ``manifest.json``. Arrays are named by their path without the
``.npy`` suffix (``cameras/front/frames``, ``tracking/pose``, ``features/mediapipe``) and read with
``np.load(mmap_mode="r")`` so a window of frames costs the window, not the capture.

Writes are atomic: an array is written under a temporary name and renamed into place, then the manifest is
rewritten (also via rename). A stage killed mid-write leaves the previous manifest and arrays intact and no
manifest entry for the half-written array. Readers validate manifest and headers and say which command
produces what is missing.

Layout (see ``../shared/DESIGN.md``)::

    manifest.json
    template/{vertices,triangles,uvs,blend_basis}.npy
    cameras/<name>/frames.npy        (N, H, W, 3) uint8
    cameras/<name>/clean_plate.npy   (H, W, 3) uint8
    cameras/<name>/{body_plate (H, W, 3) uint8, body_mask (H, W) uint8, torso_sway (N, 2),
                    sway_from_pose (7, 2)}.npy   optional: the torso as a layer that sways (``prepare``)
    tracking/{pose (N, 6), blend_weights (N, B), textures (N, T, T, 3) uint8}.npy
    features/<extractor>.npy (N, D), features/<extractor>.valid.npy (N,) bool
    latents/<run>.npy (N, Z), renders/<run>/<camera>.npy
    truth/...                        ground truth of synthetic captures

Modules: :mod:`.store` (``CaptureCache``), :mod:`.manifest` (the schema), :mod:`.layout` (every array name),
:mod:`.finite` (the NaN policy), :mod:`.files` (atomic files, staged folders), :mod:`.pages` (memory-map pages),
:mod:`.template` (the head template as a mesh). This package re-exports what ``avatar_lightning.cache`` offered
when it was one module, so code written against it keeps working.
"""

from __future__ import annotations

from avatar_lightning.cache.files import atomic_write_text, check_output_folder, new_file_mode
from avatar_lightning.cache.finite import MAY_HOLD_NAN, must_be_finite, nonfinite_rows
from avatar_lightning.cache.layout import PRODUCERS, producer_of
from avatar_lightning.cache.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SPLITS,
    ArrayRecord,
    CameraRecord,
    Manifest,
    SequenceRecord,
    Split,
)
from avatar_lightning.cache.pages import PageBudget, release_pages
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.errors import CacheError

__all__ = [
    "MANIFEST_NAME", "MAY_HOLD_NAN", "PRODUCERS", "SCHEMA_VERSION", "SPLITS", "ArrayRecord", "CacheError",
    "CameraRecord", "CaptureCache", "Manifest", "PageBudget", "SequenceRecord", "Split", "atomic_write_text",
    "check_output_folder", "must_be_finite", "new_file_mode", "nonfinite_rows", "producer_of", "release_pages",
]
