"""Every array name of the capture cache, in one place, and which command writes each.

An array is named by its path in the cache folder without ``.npy``; see ``avatar_lightning.cache`` for the
layout. Stages, DataModules and scorers build names here instead of writing ``f"cameras/{camera}/frames"``
themselves, so a name changes in one place.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from avatar_lightning.cache.store import CaptureCache

POSE = "tracking/pose"  # (N, 6) axis-angle + translation
# (N,) bool: frames in which some camera saw the face (prepare). Pose, blend weights and textures of the other
# frames are interpolated guesses: the head VAE and the re-render U-Net never train or validate on them. A cache
# without it (synthetic actors: a face in every frame) counts every frame as seen.
FACE_SEEN = "tracking/face_seen"
BLEND_WEIGHTS = "tracking/blend_weights"  # (N, B)
TEXTURES = "tracking/textures"  # (N, T, T, 3) uint8
TEMPLATE_ARRAYS = ("vertices", "triangles", "uvs", "uv_triangles", "blend_basis")  # uv_triangles: optional (UV seams)


def template_array(part: str) -> str:
    """``template/<part>``: one of :data:`TEMPLATE_ARRAYS`."""
    return f"template/{part}"


def frames_array(camera: str) -> str:
    """``(N, H, W, 3) uint8`` frames of ``camera``."""
    return f"cameras/{camera}/frames"


def clean_plate_array(camera: str) -> str:
    """``(H, W, 3) uint8`` empty background of ``camera``."""
    return f"cameras/{camera}/clean_plate"


def body_plate_array(camera: str) -> str:
    """``(H, W, 3) uint8`` the body below the head at zero sway of ``camera`` (``prepare``; optional)."""
    return f"cameras/{camera}/body_plate"


def body_mask_array(camera: str) -> str:
    """``(H, W) uint8`` 0-255: where :func:`body_plate_array` is body."""
    return f"cameras/{camera}/body_mask"


def torso_sway_array(camera: str) -> str:
    """``(N, 2) float32``: each frame's torso translation in pixels (x, y) relative to the body plate."""
    return f"cameras/{camera}/torso_sway"


def sway_from_pose_array(camera: str) -> str:
    """``(7, 2) float32`` ``W``: ``[pose, 1] @ W`` is the sway a head pose goes with (for animation)."""
    return f"cameras/{camera}/sway_from_pose"


def body_arrays(camera: str) -> tuple[str, str, str, str]:
    """Every array of ``camera``'s body plate, all present or none (:mod:`avatar_lightning.render.body`)."""
    return body_plate_array(camera), body_mask_array(camera), torso_sway_array(camera), sway_from_pose_array(camera)


def crop_boxes_array(camera: str) -> str:
    """``(N, 3)`` face crop boxes (centre x, centre y, side in source pixels) of an ``ingest --crop`` camera."""
    return f"cameras/{camera}/crop_boxes"


def landmark_array(camera: str) -> str:
    """FaceMesh landmarks ``(N, 478, 3)`` float32 (pixels; z relative depth) of ``camera``; NaN: no face."""
    return f"tracking/landmarks/{camera}"


def landmark_valid_array(camera: str) -> str:
    """``(N,) bool``: where :func:`landmark_array` found a face."""
    return f"tracking/landmarks/{camera}.valid"


def feature_array(output: str) -> str:
    """Cache array of a feature output: ``features/<output>`` ``(N, D)``."""
    return f"features/{output}"


def valid_array(output: str) -> str:
    """Cache array of an output's validity mask: ``features/<output>.valid`` ``(N,) bool``."""
    return f"features/{output}.valid"


def latent_array(run: str) -> str:
    """The head VAE's latents ``z (N, Z)`` of run ``run``: the animator's target."""
    return f"latents/{run}"


def render_name(run: str, camera: str) -> str:
    """Cache array of I_orig for ``camera`` in render run ``run``; its coverage is :func:`render_mask_name`."""
    return f"renders/{run}/{camera}"


def render_mask_name(run: str, camera: str) -> str:
    """``(N, H, W) uint8`` coverage (0 or 255) of :func:`render_name`."""
    return f"{render_name(run, camera)}.mask"


def truth_array(name: str) -> str:
    """Ground truth of a synthetic capture: ``truth/pose``, ``truth/blend_weights``."""
    return f"truth/{name}"


def foreground_array(camera: str) -> str:
    """``(N, H, W) uint8`` true foreground mask of ``camera`` (synthetic captures only)."""
    return f"truth/{camera}/foreground"


# Which command writes which array: used in every "missing array" message. First match wins.
PRODUCERS: tuple[tuple[str, str], ...] = (
    ("cameras/*/frames", "`python -m avatar_lightning synth` (synthetic actor), `prepare` (real capture) or `ingest` "
                         "(driving video)"),
    ("cameras/*/clean_plate", "`python -m avatar_lightning synth` (synthetic actor) or `prepare` (real capture)"),
    ("cameras/*/body_*", "`python -m avatar_lightning prepare` (a real capture with a torso below the face)"),
    ("cameras/*/torso_sway", "`python -m avatar_lightning prepare` (a real capture with a torso below the face)"),
    ("cameras/*/sway_from_pose*", "`python -m avatar_lightning prepare` (a real capture with a torso below the face)"),
    ("template/*", "`python -m avatar_lightning synth` (synthetic actor) or `prepare` (real capture)"),
    ("tracking/*", "`python -m avatar_lightning synth` (synthetic actor) or `prepare` (real capture)"),
    ("truth/*", "`python -m avatar_lightning synth` (only synthetic captures carry ground truth)"),
    ("features/*", "`python -m avatar_lightning features --cache DIR --extractor NAME`"),
    ("latents/*", "`python -m avatar_lightning encode --ckpt HEAD_VAE.ckpt --cache DIR --name RUN`"),
    ("renders/*", "`python -m avatar_lightning render-mesh --ckpt HEAD_VAE.ckpt --cache DIR --name RUN` (I_orig)"),
)


def producer_of(name: str) -> str:
    """The command that writes array ``name``, for error messages."""
    for pattern, command in PRODUCERS:
        if fnmatch.fnmatchcase(name, pattern):
            return command
    return "the stage that writes it"



def latent_source(cache: CaptureCache, name: str) -> Path | None:
    """The head VAE checkpoint ``encode`` recorded for ``latents/<name>`` (``meta.latents``), if any."""
    entry = cache.manifest.meta.get("latents", {}).get(name)
    return Path(entry["checkpoint"]) if entry and entry.get("checkpoint") else None
