"""The head beyond the face: a shell from the FaceMesh oval over forehead, skull, hair and ears.

FaceMesh's mesh ends at the face oval (mid-forehead, cheeks, jaw), so the re-render U-Net had to invent hair and
ears from nothing: a soft dark cap. The paper's head model renders the whole head. This shell extends the
template outward from the upper part of the oval (the crown and the sides down to the ears; not the jaw, which
moves with the mouth and meets the neck, and not the neck, which moves with the torso) to the person's silhouette,
so that the capture's frames texture it like the face, and I_orig holds the person's hair.

Geometry, per oval point ``o`` of that arc, in the head frame (x right, y down, z away from a frontal camera):
the point moves outward from the oval's centre in the image plane, from its own radius ``u_o`` to the
silhouette's ``extent * u_o``, and back in depth to the skull's widest section, along a quarter ellipse
(:data:`STATIONS`), then one ring behind it closes the skull's back. ``extent`` per point comes from the
person's silhouette (MediaPipe's selfie segmentation, shipped in the mediapipe wheel): over a sample of frames,
how far beyond the projected oval point the person mask reaches, along the ray from the projected centre
(:func:`extents_from_masks`); the median over frames, smoothed along the arc.

Texture: the shell's UVs fill the margin of the face's UV square round the oval (the face keeps its texels), so
``prepare`` textures it from the frames like the face. Blend shapes: a shell vertex follows its oval point's
offset, fading to none at the silhouette, so the forehead's motion does not tear the shell off.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from avatar_lightning.quiet import native_stderr_filtered
from avatar_lightning.render.cameras import Cameras
from avatar_lightning.render.mesh import Mesh
from avatar_lightning.synth import face as F

# Oval points whose outward direction (unit, y down) has a y component below this get a shell: the crown and the
# sides down to about the ears. Below, the jaw moves with the mouth and meets the neck.
UP_LIMIT = 0.35
# Stations of the quarter ellipse from the oval (0) to the silhouette (pi/2): (angle, UV share of the margin).
STATIONS = ((np.pi / 6, 0.3), (np.pi / 3, 0.6), (np.pi / 2, 0.85))
BACK_RADIUS, BACK_DEPTH = 0.55, 0.6  # the ring behind the silhouette: radius share, depth in silhouette radii
SILHOUETTE_DEPTH_M = 0.0  # the skull's widest section: about the head's rotation centre (synth.face's origin)
MIN_DEPTH_M = 0.01  # the shell always wraps back this far, even where the silhouette hugs the oval (cheeks)
EXTENT_RANGE = (1.0, 2.2)  # silhouette radius over the oval's, per direction
DEFAULT_EXTENT_UP, DEFAULT_EXTENT_SIDE = 1.45, 1.12  # a typical head with short hair (no silhouette to fit)
UV_BORDER = 0.01
# The mouth interior's UV island moves from the top-left corner (where the crown's shell now lies) to the
# bottom-left one, below the jaw, which has no shell.
ISLAND_SHIFT_V = 0.8
MASK_THRESHOLD = 0.5
# The shell stops this far inside the silhouette (a share of the silhouette's radius): its outermost ring is seen
# edge-on, and at the person's very edge its texels would read the background behind the hair (a blue fringe on
# the anchor's textures); the re-render U-Net draws the outline itself.
SILHOUETTE_INSET = 0.03


@dataclass(frozen=True)
class ShellLayout:
    """The arc of the oval that gets a shell: ``oval (A,)`` vertex indices in loop order, their outward image-plane
    directions ``directions (A, 2)`` from ``centre (2,)`` (x, y in the head frame) and radii ``radii (A,)``."""

    oval: np.ndarray
    centre: np.ndarray
    directions: np.ndarray
    radii: np.ndarray


def shell_layout(vertices: np.ndarray) -> ShellLayout:
    """The upper arc of the face oval of a template's rest ``vertices (V, 3)`` (see :data:`UP_LIMIT`)."""
    loop = np.array(F.FACE_OVAL)
    xy = np.asarray(vertices, np.float64)[loop, :2]
    centre = xy.mean(0)
    offset = xy - centre
    radii = np.linalg.norm(offset, axis=1)
    directions = offset / radii[:, None]
    chosen = directions[:, 1] < UP_LIMIT
    if chosen.all() or not chosen.any():
        raise ValueError("the face oval has no upper arc: is the template upright (y down)?")
    start = int(np.flatnonzero(chosen & ~np.roll(chosen, 1))[0])  # the arc's first point after the jaw
    order = (start + np.arange(len(loop))) % len(loop)
    order = order[chosen[order]]
    return ShellLayout(loop[order], centre, directions[order], radii[order])


def default_extents(layout: ShellLayout) -> np.ndarray:
    """Extents of a typical head: wider above the brows (hair), close to the face at the ears."""
    up = np.clip(-layout.directions[:, 1], 0.0, 1.0)
    return DEFAULT_EXTENT_SIDE + (DEFAULT_EXTENT_UP - DEFAULT_EXTENT_SIDE) * up


@dataclass(frozen=True)
class ShelledTemplate:
    """A template with its head shell: ``template`` (:class:`synth.face.FaceTemplate`), ``blend_basis (K, V, 3)``,
    the shell's vertex indices ``shell (S,)`` and the ``extents (A,)`` it was built with."""

    template: F.FaceTemplate
    blend_basis: np.ndarray
    shell: np.ndarray
    extents: np.ndarray


def add_head_shell(template: F.FaceTemplate, blend_basis: np.ndarray, extents: np.ndarray | None = None
                   ) -> ShelledTemplate:
    """The template with a shell on the oval's upper arc, out to ``extents (A,)`` x the oval's radius per point
    (default :func:`default_extents`). Vertices, UVs and blend rows are appended; the face's are unchanged, except
    that the mouth's UV island moves out of the crown's way (:data:`ISLAND_SHIFT_V`)."""
    vertices = np.asarray(template.vertices, np.float64)
    layout = shell_layout(vertices)
    extents = default_extents(layout) if extents is None else np.asarray(extents, np.float64)
    if extents.shape != layout.oval.shape or not np.isfinite(extents).all():
        raise ValueError(f"extents must be {len(layout.oval)} finite values (one per point of the oval's upper arc), "
                         f"got {extents.shape}")
    extents = np.clip(extents, *EXTENT_RANGE)
    arc = len(layout.oval)
    rings = len(STATIONS) + 1
    new_vertices = shell_rings(vertices, layout, extents)

    first = len(vertices)
    index = np.vstack([layout.oval[None], first + np.arange(rings * arc).reshape(rings, arc)])  # (rings + 1, A)
    quads = [(index[r, a], index[r, a + 1], index[r + 1, a + 1], index[r + 1, a])
             for r in range(rings) for a in range(arc - 1)]
    triangles = np.array([t for q in quads for t in ((q[0], q[1], q[2]), (q[0], q[2], q[3]))], np.int64)
    all_vertices = np.concatenate([vertices, new_vertices.reshape(-1, 3)])
    triangles = _outward(all_vertices, triangles, np.r_[layout.centre, SILHOUETTE_DEPTH_M])

    uvs = np.asarray(template.uvs, np.float64).copy()
    island = np.unique(np.asarray(template.uv_triangles)[np.asarray(template.mouth_triangles)])
    uvs[island, 1] += ISLAND_SHIFT_V
    face_uv = uvs[layout.oval]  # the landmark vertices' UV index is their vertex index
    uv_centre = uvs[list(F.FACE_OVAL)].mean(0)
    reach = _uv_reach(uv_centre, face_uv)  # (A,) the scale that takes each oval point to the UV border
    shares = [share for _, share in STATIONS] + [1.0]
    new_uvs = np.stack([uv_centre + (face_uv - uv_centre) * (1 + s * (reach - 1))[:, None] for s in shares])
    # The oval's UVs are its vertices' own (index = vertex index); the new vertices' UVs follow the face's UVs.
    uv_triangles = np.where(triangles >= first, triangles - first + len(uvs), triangles)

    basis = np.asarray(blend_basis, np.float32)
    fade = np.array([1 - s for s in shares], np.float32)  # the oval's offset, fading out towards the back
    shell_rows = basis[:, layout.oval][:, None] * fade[None, :, None, None]  # (K, rings, A, 3)
    shelled = F.FaceTemplate(**{
        **template.__dict__,
        "vertices": all_vertices.astype(np.float32),
        "triangles": np.concatenate([np.asarray(template.triangles), triangles]),
        "uvs": np.concatenate([uvs, new_uvs.reshape(-1, 2)]).astype(np.float32),
        "uv_triangles": np.concatenate([np.asarray(template.uv_triangles), uv_triangles]),
    })
    return ShelledTemplate(shelled, np.concatenate([basis, shell_rows.reshape(len(basis), -1, 3)], axis=1),
                           np.arange(first, len(all_vertices)), extents)


def shell_rings(vertices: np.ndarray, layout: ShellLayout, extents: np.ndarray) -> np.ndarray:
    """The shell's new vertices ``(rings, A, 3)``: the quarter ellipse's :data:`STATIONS`, then the back ring."""
    oval = np.asarray(vertices, np.float64)[layout.oval]
    silhouette_z = np.maximum(oval[:, 2] + MIN_DEPTH_M, SILHOUETTE_DEPTH_M)
    silhouette_u = extents * layout.radii
    out = np.zeros((len(STATIONS) + 1, len(layout.oval), 3))
    for r, (angle, _) in enumerate(STATIONS):
        u = layout.radii + (silhouette_u - layout.radii) * np.sin(angle)
        out[r, :, :2] = layout.centre + layout.directions * u[:, None]
        out[r, :, 2] = oval[:, 2] + (silhouette_z - oval[:, 2]) * (1 - np.cos(angle))
    out[-1, :, :2] = layout.centre + layout.directions * (BACK_RADIUS * silhouette_u)[:, None]
    out[-1, :, 2] = silhouette_z + BACK_DEPTH * silhouette_u
    return out


def _outward(vertices: np.ndarray, triangles: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Triangles wound so that their normal points away from ``inside`` (a point within the skull)."""
    a, b, c = (vertices[triangles[:, k]] for k in range(3))
    normal = np.cross(b - a, c - a)
    flip = np.einsum("ij,ij->i", normal, (a + b + c) / 3 - inside) < 0
    out = triangles.copy()
    out[flip] = out[flip][:, [0, 2, 1]]
    return out


def _uv_reach(centre: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Per point, the factor ``s >= 1`` with ``centre + (point - centre) * s`` on the UV square's inner border."""
    offset = points - centre
    lo, hi = UV_BORDER, 1 - UV_BORDER
    with np.errstate(divide="ignore", invalid="ignore"):
        to_hi = np.where(offset > 0, (hi - centre) / offset, np.inf)
        to_lo = np.where(offset < 0, (lo - centre) / offset, np.inf)
    return np.maximum(np.minimum(to_hi, to_lo).min(1), 1.0)


# ---------------------------------------------------------------------------------------------- fitting
def extents_from_masks(masks: np.ndarray, oval_px: np.ndarray, centre_px: np.ndarray,
                       threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """Per arc point, how far the person reaches beyond it: ``(A,)`` radius ratios (median over frames).

    Args:
        masks: ``(S, H, W)`` person probability (or 0/1) per sampled frame.
        oval_px: ``(S, A, 2)`` the arc's oval points projected into those frames, in pixels.
        centre_px: ``(S, 2)`` the oval centre projected likewise.

    Walks each ray from the centre through the oval point outwards in half-pixel steps; the first step off the
    mask (or off the image) ends the person there. The ratios are clipped to :data:`EXTENT_RANGE` and smoothed
    along the arc (median of three, then mean of three), since one frame's stray hand or collar is noise.
    """
    masks = np.asarray(masks, np.float32)
    s, height, width = masks.shape
    ratios = np.full((s, oval_px.shape[1]), np.nan)
    steps = np.arange(1.0, EXTENT_RANGE[1] + 1e-6, 0.01)  # as a fraction of the oval point's radius
    for i in range(s):
        offset = oval_px[i] - centre_px[i]  # (A, 2)
        radius = np.linalg.norm(offset, axis=1)
        if not np.isfinite(radius).all() or (radius < 2).any():
            continue
        samples = centre_px[i] + offset[:, None] * steps[None, :, None]  # (A, T, 2)
        x, y = np.round(samples[..., 0] - 0.5).astype(int), np.round(samples[..., 1] - 0.5).astype(int)
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        on = np.zeros(x.shape, bool)
        on[inside] = masks[i][y[inside], x[inside]] >= threshold
        off = ~on
        first_off = np.where(off.any(1), off.argmax(1), len(steps) - 1)
        ratios[i] = steps[first_off]
    extents = np.nanmedian(ratios, axis=0) if np.isfinite(ratios).any() else np.full(oval_px.shape[1], np.nan)
    if not np.isfinite(extents).all():
        raise ValueError("no sampled frame gave a silhouette for the head shell")
    extents = np.clip(extents, *EXTENT_RANGE)
    padded = np.r_[extents[:1], extents, extents[-1:]]
    median = np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)
    padded = np.r_[median[:1], median, median[-1:]]
    return (padded[:-2] + padded[1:-1] + padded[2:]) / 3


class PersonSegmenter:
    """MediaPipe's selfie segmentation (general model, shipped in the mediapipe wheel): person probability per pixel.

    Built lazily, like :class:`features.mediapipe_landmarks.FaceMeshTracker`.
    """

    def __init__(self) -> None:
        self._model: Any = None

    def _build(self) -> Any:
        import mediapipe as mp  # heavy: only when a silhouette is wanted

        with warnings.catch_warnings(), native_stderr_filtered():
            warnings.simplefilter("ignore", UserWarning)
            return mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``(H, W) float32`` in [0, 1] for an RGB ``image (H, W, 3) uint8``."""
        if self._model is None:
            self._model = self._build()
        result = self._model.process(np.ascontiguousarray(image))
        return np.clip(np.asarray(result.segmentation_mask, np.float32), 0.0, 1.0)

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None


def segment(frames: Sequence[np.ndarray]) -> np.ndarray:
    """``(S, H, W) float32`` person masks of RGB ``frames``."""
    segmenter = PersonSegmenter()
    try:
        return np.stack([segmenter(frame) for frame in frames])
    finally:
        segmenter.close()


def project_head_points(points: np.ndarray, pose: np.ndarray, camera: Cameras) -> np.ndarray:
    """Head-frame ``points (P, 3)`` under rigid ``pose (S, 6)`` (as :meth:`Mesh.deform`'s) -> pixels ``(S, P, 2)``."""
    pose_t = torch.from_numpy(np.asarray(pose, np.float32))
    with torch.no_grad():
        posed = Mesh(torch.from_numpy(np.asarray(points, np.float32)), torch.zeros(0, 3, dtype=torch.long)).deform(
            pose=pose_t)
        pixels, _ = camera.project_to_pixels(posed)
    return pixels.double().numpy()


def project_arc(mesh: Mesh, camera: Cameras, pose: np.ndarray, blend_weights: np.ndarray, layout: ShellLayout
                ) -> tuple[np.ndarray, np.ndarray]:
    """The arc's oval points ``(S, A, 2)`` and the oval's centre ``(S, 2)`` in pixels, for poses ``(S, 6)`` and
    weights ``(S, K)`` of the (shell-less) template ``mesh``. The centre is taken at the oval's mean depth."""
    with torch.no_grad():
        posed = mesh.deform(torch.from_numpy(np.asarray(blend_weights, np.float32)),
                            torch.from_numpy(np.asarray(pose, np.float32)))
        oval, _ = camera.project_to_pixels(posed[:, layout.oval])
    depth = float(mesh.vertices[list(F.FACE_OVAL), 2].mean())
    centre = project_head_points(np.array([[*layout.centre, depth]]), pose, camera)[:, 0]
    return oval.double().numpy(), centre


def fit_extents(frames: np.ndarray, mesh: Mesh, camera: Cameras, pose: np.ndarray, blend_weights: np.ndarray
                ) -> np.ndarray:
    """The shell's extents ``(A,)`` from RGB ``frames (S, H, W, 3)`` of one camera with the fitted ``pose (S, 6)``
    and ``blend_weights (S, K)`` of the shell-less template ``mesh``."""
    return extents_for_silhouettes(segment(frames), mesh, camera, pose, blend_weights)


def extents_for_silhouettes(masks: np.ndarray, mesh: Mesh, camera: Cameras, pose: np.ndarray,
                            blend_weights: np.ndarray, rounds: int = 3, inset: float = SILHOUETTE_INSET
                            ) -> np.ndarray:
    """The extents ``(A,)`` whose shell's silhouette ring lands where the person ``masks (S, H, W)`` end.

    :func:`extents_from_masks` measures the silhouette in the image, relative to the projected oval; the shell's
    silhouette ring lies deeper than the oval (further from the camera, so smaller in the image) and its extents
    are smoothed. A few rounds of "project the ring, compare with the measured ratio, rescale" remove both biases.
    ``inset``: the share of the silhouette's radius the shell stays inside it (:data:`SILHOUETTE_INSET`).
    """
    layout = shell_layout(mesh.vertices.numpy())
    oval_px, centre_px = project_arc(mesh, camera, pose, blend_weights, layout)
    measured = np.maximum(extents_from_masks(masks, oval_px, centre_px) * (1 - inset), EXTENT_RANGE[0])
    extents = measured.copy()
    radius = np.linalg.norm(oval_px - centre_px[:, None], axis=-1)  # (S, A)
    for _ in range(rounds):
        ring = shell_rings(mesh.vertices.numpy(), layout, extents)[len(STATIONS) - 1]  # the silhouette's ring
        ring_px = project_head_points(ring, pose, camera)
        model = np.nanmedian(np.linalg.norm(ring_px - centre_px[:, None], axis=-1) / radius, 0)
        extents = np.clip(extents * measured / model, *EXTENT_RANGE)
    return extents
