"""render_textured and extract_texture: identity mapping, round trip, visibility weights, broadcasting."""

from __future__ import annotations

import math

import pytest
import torch

from avatar_lightning.render import (
    Cameras,
    Mesh,
    RasterSettings,
    ellipsoid_mesh,
    extract_texture,
    fuse_views,
    get_rasterizer,
    plane_mesh,
    render_textured,
    uv_to_clip,
)

TORCH = RasterSettings(backend="torch")


def smooth_texture(size: int) -> torch.Tensor:
    """A smooth, periodic-in-u RGB texture (1, T, T, 3) in [0, 1]."""
    c = (torch.arange(size) + 0.5) / size
    v, u = torch.meshgrid(c, c, indexing="ij")
    return torch.stack(
        [
            0.5 + 0.4 * torch.sin(2 * math.pi * u) * torch.cos(math.pi * v),
            0.5 + 0.3 * torch.cos(2 * math.pi * v),
            0.3 + 2.0 * u * (1 - u) * v * (1 - v),
        ],
        -1,
    )[None]


def quad_camera(size: int) -> Cameras:
    """Sees the unit quad at z = 1 exactly edge to edge: pixel (i, j) centre <-> texel (i, j) centre."""
    K = torch.tensor([[float(size), 0.0, size / 2], [0.0, float(size), size / 2], [0.0, 0.0, 1.0]])
    return Cameras(K, torch.eye(3), torch.zeros(3), size, size)


def test_textured_quad_identity_mapping_reproduces_texture():
    size = 16
    quad = plane_mesh(1, 1, size=1.0, z=1.0)
    tex = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0))
    image, mask = render_textured(quad, quad.vertices, tex, quad_camera(size), TORCH)
    assert image.shape == (1, size, size, 3) and mask.shape == (1, size, size, 1)
    assert mask.min() == 1
    assert torch.allclose(image, tex, atol=1e-5), (image - tex).abs().max()


def test_uv_image_uv_round_trip_on_visible_texels():
    mesh = ellipsoid_mesh(24, 48)
    tex = smooth_texture(64)
    cams = Cameras.look_at([[0.0, 0.0, -0.5]], width=160, height=160, fov_degrees=35)
    verts = mesh.deform()
    image, mask = render_textured(mesh, verts, tex, cams, TORCH)
    colour, weight = extract_texture(mesh, verts, image, cams, 64, TORCH)
    assert colour.shape == (1, 64, 64, 3) and weight.shape == (1, 64, 64, 1)
    seen = weight[0, ..., 0] > 0.3
    assert seen.sum() > 500
    err = (colour[0][seen] - tex[0][seen]).abs()
    assert err.max() < 0.02, f"largest error {err.max():.4f} at texel {seen.nonzero()[err.max(-1).values.argmax()]}"
    # The back of the head (u around 1/2: longitude pi) faces away: weight 0, colour 0.
    assert weight[0, :, 20:44].max() == 0 and colour[0, :, 20:44].abs().max() == 0
    assert weight.min() >= 0 and weight.max() <= 1


def test_extraction_weight_is_zero_where_occluded_and_grows_with_cosine():
    back = plane_mesh(4, 4, size=1.0, z=2.0)  # seen head-on
    front = plane_mesh(1, 1, size=0.25, z=1.0)  # hides the middle half of `back`
    cam = quad_camera(48)
    image = torch.rand(1, 48, 48, 3)
    verts = torch.cat([back.vertices, front.vertices])[None]
    both = Mesh(
        verts[0],
        torch.cat([back.triangles, front.triangles + back.num_vertices]),
        torch.cat([back.uvs, front.uvs * 0.01]),  # `front` squeezed into one texel corner of the layout
    )
    _, weight = extract_texture(both, verts, image, cam, 32, TORCH)
    w = weight[0, ..., 0]
    assert w[16, 16] == 0  # the back plane's centre is behind the front quad
    assert w[2, 16] > 0.9  # its top edge is seen head-on: cos ~ 1
    tilted = plane_mesh(4, 4, size=1.0, z=2.0)
    rot = torch.tensor([[math.cos(1.0), 0.0, math.sin(1.0)], [0.0, 1.0, 0.0], [-math.sin(1.0), 0.0, math.cos(1.0)]])
    tilted_v = ((tilted.vertices - torch.tensor([0.0, 0.0, 2.0])) @ rot.T + torch.tensor([0.0, 0.0, 2.0]))[None]
    _, w_tilted = extract_texture(tilted, tilted_v, image, cam, 32, TORCH)
    middle = w_tilted[0, 12:20, 12:20, 0]
    assert torch.allclose(middle, torch.full_like(middle, math.cos(1.0)), atol=0.05)  # about the view angle


def test_batch_and_camera_broadcasting():
    mesh = ellipsoid_mesh(8, 12)
    tex = smooth_texture(32)
    eyes = torch.tensor([[0.0, 0.0, -0.5], [0.3, 0.0, -0.4], [0.0, -0.3, -0.4]])
    cams = Cameras.look_at(eyes, width=24, height=20)
    verts = mesh.deform()  # B = 1 against C = 3
    image, mask = render_textured(mesh, verts, tex, cams, TORCH)
    assert image.shape == (3, 20, 24, 3) and mask.shape == (3, 20, 24, 1)
    for i in range(3):
        single, _ = render_textured(mesh, verts, tex, cams[i], TORCH)
        assert torch.allclose(single[0], image[i], atol=1e-6)
    poses = torch.zeros(3, 6)
    poses[:, 0] = torch.tensor([0.0, 0.3, -0.3])
    posed = mesh.deform(pose=poses)  # B = 3 against C = 1, and per-item textures
    image2, _ = render_textured(mesh, posed, tex.expand(3, -1, -1, -1), cams[0], TORCH)
    assert image2.shape == (3, 20, 24, 3)
    assert not torch.allclose(image2[0], image2[1])
    colour, weight = extract_texture(mesh, posed, image2, cams[0], 16, TORCH)
    assert colour.shape == (3, 16, 16, 3) and weight.shape == (3, 16, 16, 1)
    fused, total = fuse_views(colour, weight)
    assert fused.shape == (16, 16, 3) and torch.isfinite(fused).all() and total.shape == (16, 16, 1)
    with pytest.raises(ValueError, match="broadcast"):
        render_textured(mesh, posed[:2], tex, cams, TORCH)


def test_settings_size_antialias_and_gradients():
    mesh = ellipsoid_mesh(8, 12)
    cams = Cameras.look_at([[0.0, 0.0, -0.5]], width=40, height=30)
    tex = smooth_texture(16).requires_grad_(True)
    verts = mesh.deform().requires_grad_(True)
    settings = RasterSettings(image_size=(20, 15), backend="torch", antialias=True)
    image, mask = render_textured(mesh, verts, tex, cams, settings)
    assert image.shape == (1, 15, 20, 3)
    assert mask.min() >= 0 and mask.max() <= 1 and ((mask > 0) & (mask < 1)).any()  # soft silhouette
    (image.sum() + mask.sum()).backward()
    assert tex.grad.abs().sum() > 0 and verts.grad.abs().sum() > 0
    assert torch.isfinite(verts.grad).all()


def test_bad_input_textured():
    mesh = ellipsoid_mesh(8, 12)
    cams = Cameras.look_at([[0.0, 0.0, -0.5]], width=16, height=16)
    tex = smooth_texture(8)
    verts = mesh.deform().clone()
    verts[0, 40] = float("nan")
    verts[0, 50, 2] = -1.0  # behind the camera
    image, mask = render_textured(mesh, verts, tex, cams, TORCH)
    assert torch.isfinite(image).all() and torch.isfinite(mask).all()
    colour, weight = extract_texture(mesh, verts, image, cams, 8, TORCH)
    assert torch.isfinite(colour).all() and torch.isfinite(weight).all()
    smooth, soft = render_textured(mesh, verts, tex, cams, RasterSettings(backend="torch", antialias=True))
    assert torch.isfinite(smooth).all() and torch.isfinite(soft).all()
    empty = Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 2))
    nothing, none = render_textured(empty, torch.zeros(1, 0, 3), tex, cams, TORCH)
    assert nothing.shape == (1, 16, 16, 3) and not nothing.any() and not none.any()
    _, no_weight = extract_texture(empty, torch.zeros(1, 0, 3), image, cams, 8, TORCH)
    assert not no_weight.any()
    with pytest.raises(ValueError, match="vertices"):
        render_textured(mesh, verts[:, :10], tex, cams, TORCH)
    with pytest.raises(ValueError, match="texture"):
        render_textured(mesh, verts, tex.expand(2, -1, -1, -1), cams, TORCH)
    with pytest.raises(ValueError, match="image"):
        extract_texture(mesh, verts, image[:, :8], cams, 8, TORCH)
    with pytest.raises(ValueError, match="uvs"):
        render_textured(Mesh(mesh.vertices, mesh.triangles), verts, tex, cams, TORCH)


def test_uv_to_clip_rasterizes_texel_centres():
    """Rasterizing the UV layout at (T, T) and interpolating uv gives each texel's centre."""
    mesh = plane_mesh(3, 3)
    r = get_rasterizer("torch")
    out = r.rasterize(uv_to_clip(mesh.uvs), mesh.triangles, (8, 8))
    uv = r.interpolate(mesh.uvs, out, mesh.triangles)
    centre = (torch.arange(8) + 0.5) / 8
    assert torch.allclose(uv[0, 3, 5], torch.stack([centre[5], centre[3]]), atol=1e-6)
