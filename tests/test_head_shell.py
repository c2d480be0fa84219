"""The head shell beyond the face oval: geometry, UV layout, blend rows, and its fit to a person's silhouette."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avatar_lightning.cache.template import mesh_from_arrays
from avatar_lightning.capture import head_shell as H
from avatar_lightning.render import Cameras, get_rasterizer, uv_to_clip
from avatar_lightning.synth import face as F
from avatar_lightning.synth.blendshapes import build_blend_basis

SIZE = 256


@pytest.fixture(scope="module")
def face() -> tuple[F.FaceTemplate, np.ndarray]:
    template = F.build_face_template(F.astronaut_photo())
    return template, build_blend_basis(template)


def _mesh(template: F.FaceTemplate, basis: np.ndarray):
    return mesh_from_arrays({"vertices": template.vertices, "triangles": template.triangles, "uvs": template.uvs,
                             "uv_triangles": template.uv_triangles, "blend_basis": basis})


def _camera() -> Cameras:
    focal = 4.0 * SIZE
    return Cameras.from_dict({"K": [[focal, 0, SIZE / 2], [0, focal, SIZE / 2], [0, 0, 1]], "R": np.eye(3).tolist(),
                              "t": [0.0, 0.0, 0.0], "width": SIZE, "height": SIZE})


def _poses(count: int) -> np.ndarray:
    """Small head turns in front of the camera, 1.2 m away."""
    rng = np.random.default_rng(0)
    pose = np.zeros((count, 6))
    pose[:, :3] = rng.normal(0, 0.08, (count, 3))
    pose[:, 5] = 1.2
    return pose


def _silhouettes(template: F.FaceTemplate, basis: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """``(S, H, W) float32`` 0/1: every triangle of the template, posed and filled in the camera's image."""
    mesh = _mesh(template, basis)
    with torch.no_grad():
        posed = mesh.deform(torch.zeros(len(pose), len(basis)), torch.from_numpy(pose).float())
        pixels, _ = _camera().project_to_pixels(posed)
    masks = np.zeros((len(pose), SIZE, SIZE), np.uint8)
    for mask, points in zip(masks, pixels.numpy(), strict=True):
        for triangle in np.round((points[template.triangles] - 0.5) * 16).astype(np.int32):
            cv2.fillConvexPoly(mask, triangle, 1, lineType=cv2.LINE_8, shift=4)  # one by one: no even-odd holes
    return masks.astype(np.float32)


# ---------------------------------------------------------------------------------------------- geometry
def test_shell_joins_the_oval_and_keeps_the_face(face) -> None:
    template, basis = face
    shelled = H.add_head_shell(template, basis)
    v = len(template.vertices)
    np.testing.assert_array_equal(shelled.template.vertices[:v], template.vertices)
    np.testing.assert_array_equal(shelled.template.triangles[: len(template.triangles)], template.triangles)
    np.testing.assert_array_equal(shelled.shell, np.arange(v, len(shelled.template.vertices)))
    new = shelled.template.triangles[len(template.triangles):]
    layout = H.shell_layout(template.vertices)
    assert set(np.unique(new[new < v]).tolist()) == set(layout.oval.tolist())  # attached at the oval's arc only
    assert len(layout.oval) >= 15 and not set(layout.oval.tolist()) & {F.CHIN, 148, 377}  # no jaw, no chin
    # Outward: every shell triangle faces away from the skull's inside.
    corners = shelled.template.vertices[new].astype(np.float64)
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    inside = np.r_[layout.centre, H.SILHOUETTE_DEPTH_M]
    assert (np.einsum("ij,ij->i", normal, corners.mean(1) - inside) > 0).all()
    # It reaches up and back: the crown above the forehead landmark, the back behind the rotation centre.
    top = shelled.template.vertices[shelled.shell]
    assert top[:, 1].min() < template.vertices[F.FOREHEAD, 1] - 0.03 and top[:, 2].max() > 0.05


def test_shell_texels_overlap_neither_the_face_nor_the_mouth(face) -> None:
    template, basis = face
    shelled = H.add_head_shell(template, basis)
    uvs, uv_triangles = shelled.template.uvs.astype(np.float64), shelled.template.uv_triangles
    assert uvs.min() >= 0 and uvs.max() <= 1
    corners = uvs[uv_triangles]
    a, b = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    areas = 0.5 * np.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])
    mesh = _mesh(shelled.template, shelled.blend_basis)
    raster = get_rasterizer("torch", torch.device("cpu")).rasterize(uv_to_clip(mesh.uvs), mesh.uv_faces, (512, 512))
    covered = float((raster.triangle_id[0] >= 0).float().mean())
    assert covered == pytest.approx(areas.sum(), rel=0.02)  # overlapping islands would cover less than their sum
    assert covered > 1.25 * float(areas[: len(template.triangles)].sum())  # the shell has texels of its own


def test_shell_follows_the_oval_fading_out(face) -> None:
    template, basis = face
    shelled = H.add_head_shell(template, basis)
    layout = H.shell_layout(template.vertices)
    rings = shelled.blend_basis[:, shelled.shell].reshape(len(basis), len(H.STATIONS) + 1, len(layout.oval), 3)
    np.testing.assert_array_equal(shelled.blend_basis[:, : len(template.vertices)], basis)
    first = 1 - H.STATIONS[0][1]
    np.testing.assert_allclose(rings[:, 0], basis[:, layout.oval] * first, atol=1e-7)
    assert np.abs(rings[:, -1]).max() == 0  # the back of the skull never moves with the face


def test_bad_extents_are_refused(face) -> None:
    template, basis = face
    arc = len(H.shell_layout(template.vertices).oval)
    with pytest.raises(ValueError, match="one per point"):
        H.add_head_shell(template, basis, np.ones(arc + 1))
    with pytest.raises(ValueError, match="finite"):
        H.add_head_shell(template, basis, np.full(arc, np.nan))


# ---------------------------------------------------------------------------------------------- fitting
def test_extents_of_a_disc() -> None:
    """A round person of radius 60 px round the centre; oval points at 40 px: every extent is 1.5."""
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
    mask = ((xx - 128) ** 2 + (yy - 128) ** 2 < 60**2).astype(np.float32)[None]
    angles = np.linspace(-np.pi, 0, 12)
    oval = 128 + 40 * np.stack([np.cos(angles), np.sin(angles)], 1)[None]
    extents = H.extents_from_masks(mask, oval, np.array([[128.0, 128.0]]))
    np.testing.assert_allclose(extents, 1.5, atol=0.03)
    empty = H.extents_from_masks(np.zeros_like(mask), oval, np.array([[128.0, 128.0]]))
    np.testing.assert_allclose(empty, H.EXTENT_RANGE[0])  # nobody there: the shell hugs the face


def test_shell_covers_a_synthetic_heads_silhouette(face) -> None:
    """A head of known extents is drawn in a few poses; the shell fitted to those silhouettes has the same extents
    and covers the same pixels, above the jaw."""
    template, basis = face
    layout = H.shell_layout(template.vertices)
    truth = H.default_extents(layout) * np.linspace(1.0, 1.12, len(layout.oval))  # a lopsided hairdo
    head = H.add_head_shell(template, basis, truth)
    pose = _poses(6)
    masks = _silhouettes(head.template, head.blend_basis, pose)
    weights = np.zeros((len(pose), len(basis)))
    fitted = H.extents_for_silhouettes(masks, _mesh(template, basis), _camera(), pose, weights, inset=0.0)
    np.testing.assert_allclose(fitted, truth, atol=0.05)
    inside = H.extents_for_silhouettes(masks, _mesh(template, basis), _camera(), pose, weights)
    assert (inside < fitted).all() and (inside > fitted * (1 - 2 * H.SILHOUETTE_INSET)).all()
    shell = H.add_head_shell(template, basis, fitted)
    covered = _silhouettes(shell.template, shell.blend_basis, pose) > 0
    true = masks > 0
    iou = (covered & true).sum() / (covered | true).sum()
    assert iou > 0.95, iou
    no_shell = _silhouettes(template, basis, pose) > 0
    assert (no_shell & true).sum() / (no_shell | true).sum() < 0.8  # the face alone misses much of the head


def test_person_segmenter_finds_a_person_in_a_real_frame(shared_dir: Path) -> None:
    """MediaPipe's selfie segmentation, from the wheel: on the shared anchor's first frame, the face's centre is
    person and the image's top corners are not. Skips where ``../shared`` is absent."""
    from avatar_lightning.video import iter_frames

    frame = next(iter(iter_frames(shared_dir / "data" / "capture" / "anchor_71s.mp4")))
    frame = cv2.resize(frame, (256, int(round(256 * frame.shape[0] / frame.shape[1]))), interpolation=cv2.INTER_AREA)
    mask = H.segment([frame])[0]
    assert mask.shape == frame.shape[:2] and 0 <= mask.min() and mask.max() <= 1
    height, width = mask.shape
    assert mask[height // 3, width // 2] > 0.5
    assert mask[:8, :8].mean() < 0.5 and mask[:8, -8:].mean() < 0.5
