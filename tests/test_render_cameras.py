"""Cameras (OpenCV convention, clip space, manifest records) and meshes (deform, normals)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from avatar_lightning.render import (
    Cameras,
    Mesh,
    axis_angle_to_matrix,
    ellipsoid_mesh,
    plane_mesh,
    vertex_normals,
)


def simple_camera(width=64, height=48, f=50.0):
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    return Cameras(K, torch.eye(3), torch.tensor([0.0, 0.0, 2.0]), width, height)


def test_projection_opencv_convention():
    cam = simple_camera()
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.2, 0.1, 0.0], [0.0, 0.0, -3.0]]])
    pix, depth = cam.project_to_pixels(pts)
    assert torch.allclose(pix[0, 0], torch.tensor([32.0, 24.0]))  # the principal point
    assert torch.allclose(pix[0, 1], torch.tensor([32 + 50 * 0.2 / 2, 24 + 50 * 0.1 / 2]))  # x right, y down
    assert depth[0].tolist() == pytest.approx([2.0, 2.0, -1.0])  # z forward; behind the camera is negative
    assert torch.isfinite(pix).all()


def test_clip_space_matches_pixels_and_depth_range():
    cam = simple_camera()
    near, far = 0.5, 10.0
    pts = torch.tensor([[[0.3, -0.2, 0.5], [-0.4, 0.3, 3.0], [0.0, 0.0, -1.5], [0.1, 0.1, 8.0]]])
    clip = cam.to_clip(pts, near, far)
    pix, depth = cam.project_to_pixels(pts)
    ndc = clip[..., :2] / clip[..., 3:]
    assert torch.allclose((ndc + 1) / 2 * torch.tensor([64.0, 48.0]), pix, atol=1e-4)
    assert torch.allclose(clip[..., 3], depth)  # w = z_c
    zn = clip[..., 2] / clip[..., 3]
    assert zn[0, 2] == pytest.approx(-1.0, abs=1e-5)  # z_c = near
    assert zn[0, 3] == pytest.approx((far + near) / (far - near) - 2 * far * near / (far - near) / 10, abs=1e-5)
    assert (zn[0, :2] > -1).all() and (zn[0, :2] < 1).all()
    with pytest.raises(ValueError, match="near"):
        cam.to_clip(pts, 1.0, 0.5)


def test_look_at():
    cam = Cameras.look_at([[0.0, 0.0, -2.0], [2.0, 0.0, 0.0]], width=32, height=32, focal=40.0)
    assert len(cam) == 2
    assert torch.allclose(cam.R[0], torch.eye(3), atol=1e-6)  # default up = -y: identity from -z
    assert torch.allclose(cam.centers, torch.tensor([[0.0, 0.0, -2.0], [2.0, 0.0, 0.0]]), atol=1e-6)
    for i in range(2):
        assert torch.allclose(cam.R[i] @ cam.R[i].T, torch.eye(3), atol=1e-6)
        assert torch.det(cam.R[i]) == pytest.approx(1.0, abs=1e-6)
    pix, depth = cam.project_to_pixels(torch.zeros(1, 1, 3))  # the target projects to the image centre
    assert torch.allclose(pix, torch.full((2, 1, 2), 16.0), atol=1e-5)
    assert torch.allclose(depth, torch.full((2, 1), 2.0))
    # World "up" (-y) appears up in the image: smaller row than the centre.
    up_pix, _ = cam[0].project_to_pixels(torch.tensor([[[0.0, -0.5, 0.0]]]))
    assert up_pix[0, 0, 1] < 16
    fov = Cameras.look_at([0.0, 0.0, -1.0], width=100, height=50, fov_degrees=90.0)
    assert fov.K[0, 0, 0] == pytest.approx(50.0)


def test_batches_broadcast():
    cams = Cameras.look_at(torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.0, -3.0], [1.0, 0.0, -2.0]]), width=8, height=8)
    pts = torch.randn(1, 5, 3) * 0.1
    pix, depth = cams.project_to_pixels(pts)
    assert pix.shape == (3, 5, 2) and depth.shape == (3, 5)
    for i in range(3):
        assert torch.allclose(cams[i].project_to_pixels(pts)[0][0], pix[i])
    assert cams.to_clip(pts.expand(3, -1, -1)).shape == (3, 5, 4)
    assert cams[1].to_clip(torch.randn(4, 5, 3)).shape == (4, 5, 4)
    with pytest.raises(ValueError, match="broadcast"):
        cams.project_to_pixels(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="points"):
        cams.project_to_pixels(torch.randn(5, 3))


def test_records_round_trip_and_resize():
    cams = Cameras.look_at([[0.0, 0.0, -2.0], [1.0, 0.5, -2.0]], width=40, height=30)
    records = cams.as_dicts()
    assert set(records[0]) == {"K", "R", "t", "width", "height"}
    assert isinstance(records[0]["K"][0], list)
    back = Cameras.from_dicts([{**r, "name": f"cam{i}"} for i, r in enumerate(records)])  # extra keys ignored
    for key in ("K", "R", "t"):
        assert torch.allclose(getattr(back, key), getattr(cams, key))
    assert back.image_size == (40, 30)

    @dataclass(frozen=True)
    class Record:  # the capture manifest's camera record has this shape
        name: str
        K: list
        R: list
        t: list
        width: int
        height: int

    one = Cameras.from_dict(Record(name="front", **cams.as_dict(1)))
    assert torch.allclose(one.t, cams.t[1:])
    with pytest.raises(ValueError, match="image size"):
        Cameras.from_dicts([records[0], {**records[1], "width": 41}])
    with pytest.raises(ValueError, match="K"):
        Cameras(torch.eye(3)[None].expand(2, 3, 3), torch.eye(3)[None], torch.zeros(1, 3), 8, 8)

    half = cams.resized(20, 15)
    p_full, _ = cams.project_to_pixels(torch.tensor([[[0.1, 0.2, 0.3]]]))
    p_half, _ = half.project_to_pixels(torch.tensor([[[0.1, 0.2, 0.3]]]))
    assert torch.allclose(p_half, p_full / 2, atol=1e-5)


def test_axis_angle_to_matrix():
    rot = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2]))
    assert torch.allclose(rot @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    aa = torch.randn(5, 3)
    r = axis_angle_to_matrix(aa)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-5)
    zero = torch.zeros(3, requires_grad=True)
    axis_angle_to_matrix(zero).sum().backward()
    assert torch.isfinite(zero.grad).all()
    small = torch.tensor([1e-5, -2e-5, 3e-5], dtype=torch.float64)
    exact = torch.linalg.matrix_exp(
        torch.tensor([[0, -small[2], small[1]], [small[2], 0, -small[0]], [-small[1], small[0], 0]])
    )
    assert torch.allclose(axis_angle_to_matrix(small), exact, atol=1e-12)


def test_deform_blend_shapes_then_pose():
    g = torch.Generator().manual_seed(0)
    base = ellipsoid_mesh(6, 8)
    basis = torch.randn(3, base.num_vertices, 3, generator=g) * 0.01
    mesh = Mesh(base.vertices, base.triangles, base.uvs, blend_basis=basis)
    weights = torch.randn(2, 3, generator=g)
    pose = torch.tensor([[0.1, -0.2, 0.3, 0.01, 0.02, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    out = mesh.deform(weights, pose)
    assert out.shape == (2, mesh.num_vertices, 3)
    shaped = mesh.vertices + torch.einsum("k,kvc->vc", weights[0], basis)
    expected = shaped @ axis_angle_to_matrix(pose[0, :3]).T + pose[0, 3:]
    assert torch.allclose(out[0], expected, atol=1e-6)
    assert torch.allclose(out[1], mesh.vertices + torch.einsum("k,kvc->vc", weights[1], basis), atol=1e-6)
    assert torch.equal(mesh.deform()[0], mesh.vertices)
    with pytest.raises(ValueError, match="blend_weights"):
        mesh.deform(torch.zeros(2, 4), pose)
    with pytest.raises(ValueError, match="batch"):
        mesh.deform(weights, pose[:1].expand(3, -1))
    with pytest.raises(ValueError, match="pose"):
        mesh.deform(weights, pose[:, :3])


def test_normals_point_outwards():
    plane = plane_mesh(2, 3)
    n = vertex_normals(plane.vertices, plane.triangles)
    assert torch.allclose(n[0], torch.tensor([0.0, 0.0, -1.0]).expand_as(n[0]), atol=1e-6)
    ellipsoid = ellipsoid_mesh(12, 16)
    n = ellipsoid.vertex_normals()[0]
    used = torch.zeros(ellipsoid.num_vertices, dtype=torch.bool)
    used[ellipsoid.triangles.reshape(-1)] = True  # two duplicated pole vertices are on no triangle
    outward = (n * ellipsoid.vertices).sum(-1)
    assert (outward[used] > 0).all() and (n[~used] == 0).all()
    assert torch.allclose(n[used].norm(dim=-1), torch.ones(int(used.sum())), atol=1e-5)
    assert ellipsoid.num_triangles == 2 * 16 * 11
    bad = ellipsoid.vertices.clone()
    bad[0] = float("nan")
    assert torch.isfinite(vertex_normals(bad, ellipsoid.triangles)).all()


def test_mesh_validation():
    v = torch.zeros(4, 3)
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    with pytest.raises(ValueError, match="triangle indices"):
        Mesh(v, f + 2)
    with pytest.raises(ValueError, match="triangles must be"):
        Mesh(v, f.float())
    with pytest.raises(ValueError, match="per-vertex uvs"):
        Mesh(v, f, uvs=torch.zeros(3, 2))
    seams = Mesh(v, f, uvs=torch.zeros(6, 2), uv_triangles=torch.tensor([[0, 1, 2], [3, 4, 5]]))
    assert torch.equal(seams.uv_faces, seams.uv_triangles)
    with pytest.raises(ValueError, match="blend_basis"):
        Mesh(v, f, blend_basis=torch.zeros(2, 5, 3))
    assert Mesh(v, f.int()).triangles.dtype == torch.int64
    empty = Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long))
    assert empty.deform(pose=torch.zeros(2, 6)).shape == (2, 0, 3)
