"""Rasterizer primitives: analytic cases on every available backend, gradients, bad input, parity."""

from __future__ import annotations

import math

import pytest
import torch

from avatar_lightning.render import RasterOutput, get_rasterizer, nvdiffrast_available, plane_mesh
from avatar_lightning.render.reference import rasterize_dense
from avatar_lightning.render.torch_backend import TorchRasterizer

CUDA = torch.cuda.is_available()
BACKENDS = [
    pytest.param(("torch", "cpu"), id="torch-cpu"),
    pytest.param(
        ("torch", "cuda"), id="torch-cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="no CUDA")]
    ),
    pytest.param(
        ("nvdiffrast", "cuda"),
        id="nvdiffrast",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not nvdiffrast_available(), reason="nvdiffrast/CUDA absent")],
    ),
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    name, device = request.param
    return get_rasterizer(name, device), torch.device(device)


def ndc_triangle(points_px, size, z=0.0, w=1.0):
    """Clip positions (1, 3, 4) of a triangle given in pixel coordinates of a ``size x size`` image."""
    p = torch.tensor(points_px, dtype=torch.float64)
    xy = p / size * 2 - 1
    ones = torch.ones(len(p), 1, dtype=torch.float64)
    return torch.cat([xy * w, z * w * ones, w * ones], 1)[None].float()


def random_scene(n_tri=40, batch=2, seed=0, perspective=True):
    """Random triangles in clip space with varied w (perspective) and depth."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(batch, 3 * n_tri, 4, generator=g) * 2.4 - 1.2
    pos[..., 2] = torch.rand(batch, 3 * n_tri, generator=g) * 1.8 - 0.9
    pos[..., 3] = 1.0
    if perspective:
        w = 0.5 + torch.rand(batch, 3 * n_tri, 1, generator=g) * 2
        pos = pos * w
    tri = torch.arange(3 * n_tri).view(n_tri, 3)
    return pos, tri


def test_covered_pixel_count_matches_area():
    """Point sampling at pixel centres: |count - area| is bounded by the boundary (perimeter) pixels."""
    r = TorchRasterizer()
    g = torch.Generator().manual_seed(1)
    size = 64
    for _ in range(20):
        pts = (torch.rand(3, 2, generator=g) * size).tolist()
        (x0, y0), (x1, y1), (x2, y2) = pts
        area = abs((x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)) / 2
        perimeter = sum(math.dist(pts[i], pts[(i + 1) % 3]) for i in range(3))
        out = r.rasterize(ndc_triangle(pts, size), torch.tensor([[0, 1, 2]]), (size, size))
        count = int(out.mask.sum())
        assert abs(count - area) <= perimeter / 2 + 2, (count, area, perimeter)


def test_axis_aligned_triangle_exact(backend):
    """A right triangle with legs on pixel edges: covered centres counted by hand (16 + 15 + ... + 1)."""
    r, device = backend
    pos = ndc_triangle([(0, 0), (16, 0), (0, 16)], 32).to(device)
    out = r.rasterize(pos, torch.tensor([[0, 1, 2]], device=device), (32, 32))
    mask = out.mask[0, ..., 0].cpu()
    # Row i (centre y = i + 0.5) covers centres x = j + 0.5 with x + y < 16 (the hypotenuse itself is a tie).
    expected = torch.tensor([[1.0 if (j + 0.5) + (i + 0.5) < 16 else 0.0 for j in range(32)] for i in range(32)])
    assert torch.equal(mask, expected)
    assert out.triangle_id[0, 0, 0] == 0 and out.triangle_id[0, 31, 31] == -1  # row 0 = top = NDC y -1


def test_barycentrics_sum_to_one_and_are_perspective_correct(backend):
    r, device = backend
    pos, tri = random_scene(n_tri=10, batch=2, seed=2)
    pos, tri = pos.to(device), tri.to(device)
    h, w = 24, 32
    out = r.rasterize(pos, tri, (h, w))
    covered = out.triangle_id >= 0
    assert covered.any()
    bary = out.barycentrics[covered]
    assert torch.allclose(bary.sum(-1), torch.ones_like(bary[:, 0]), atol=1e-5)
    assert bary.min() > -1e-3  # pixel centres lie inside their triangle (up to snapping)
    # Interpolating clip (x, y, w) and dividing gives back the pixel centre: perspective-correct weights.
    xyw = r.interpolate(pos[..., [0, 1, 3]], out, tri)
    ndc = xyw[..., :2] / xyw[..., 2:].clamp_min(1e-6)
    jj, ii = torch.meshgrid(torch.arange(w, device=device), torch.arange(h, device=device), indexing="xy")
    centre = torch.stack([(2 * jj + 1) / w - 1, (2 * ii + 1) / h - 1], -1).expand_as(ndc)
    assert torch.allclose(ndc[covered], centre[covered], atol=1e-4)


def test_depth_test_keeps_nearer_triangle(backend):
    r, device = backend
    near = ndc_triangle([(2, 2), (30, 4), (6, 30)], 32, z=-0.2, w=2.0)
    far = ndc_triangle([(0, 0), (32, 0), (0, 32)], 32, z=0.5, w=1.0)
    for order in ((near, far), (far, near)):
        pos = torch.cat(order, dim=1).to(device)
        tri = torch.tensor([[0, 1, 2], [3, 4, 5]], device=device)
        out = r.rasterize(pos, tri, (32, 32))
        near_id = 0 if order[0] is near else 1
        alone = r.rasterize(near.to(device), tri[:1], (32, 32)).triangle_id[0] >= 0
        assert (out.triangle_id[0][alone] == near_id).all()
        assert (out.triangle_id[0][~alone & (out.triangle_id[0] >= 0)] == 1 - near_id).all()
        assert torch.allclose(out.depth[0, 16, 16], torch.tensor([-0.2], device=device), atol=1e-5)


@pytest.mark.parametrize(
    ("cells", "size", "jitter"),
    [(10, 50, 0.1), (4, 35, 0.0)],  # 35 px: every vertex and cell diagonal runs through pixel centres (ties)
)
def test_shared_edges_are_watertight(cells, size, jitter):
    """A triangulated square covers its pixel centres exactly once: no holes, no double cover.

    Centres on the square's outline follow the top-left rule: the left and top sides own them.
    """
    r = TorchRasterizer()
    mesh = plane_mesh(cells, cells, size=1.6)
    v = mesh.vertices.clone()
    interior = (v[:, :2].abs() < 0.79).all(1)
    v[interior, :2] += (torch.rand(int(interior.sum()), 2, generator=torch.Generator().manual_seed(3)) - 0.5) * jitter
    pos = torch.cat([v[:, :2], torch.zeros(len(v), 1), torch.ones(len(v), 1)], 1)[None]
    h = w = size
    out = r.rasterize(pos, mesh.triangles, (h, w))
    jj, ii = torch.meshgrid(torch.arange(w), torch.arange(h), indexing="xy")
    x, y = (2 * jj + 1).double() / w - 1, (2 * ii + 1).double() / h - 1
    inside = (x > -0.8 - 1e-9) & (x < 0.8 - 1e-9) & (y > -0.8 - 1e-9) & (y < 0.8 - 1e-9)
    assert torch.equal(out.mask[0, ..., 0] > 0, inside)
    # Each centre lies in exactly one triangle: batch item f holds triangle f alone (the rest behind the camera).
    n = mesh.num_triangles
    alone = pos[0, mesh.triangles.reshape(-1)].expand(n, -1, -1).clone()  # (F, 3F, 4) unshared corners
    others = torch.arange(3 * n)[None, :] // 3 != torch.arange(n)[:, None]
    alone[others] = torch.tensor([0.0, 0.0, 0.0, -1.0])
    each = r.rasterize(alone, torch.arange(3 * n).view(n, 3), (h, w)).mask[..., 0]
    assert torch.equal(each.sum(0), inside.float())


def test_matches_dense_reference():
    pos, tri = random_scene(n_tri=60, batch=3, seed=4)
    fast = TorchRasterizer().rasterize(pos, tri, (40, 56))
    dense = rasterize_dense(pos, tri, (40, 56))
    assert torch.equal(fast.triangle_id, dense.triangle_id)
    assert torch.allclose(fast.rast, dense.rast)


def test_near_far_clip_per_pixel():
    """A triangle crossing the far plane (z/w = 1) is drawn only where z/w <= 1."""
    pos = ndc_triangle([(0, 0), (32, 0), (0, 32)], 32)
    pos[0, :, 2] = torch.tensor([0.0, 2.0, 0.0])  # depth grows with x
    out = TorchRasterizer().rasterize(pos, torch.tensor([[0, 1, 2]]), (32, 32))
    assert out.mask[0, 0, :8].all() and not out.mask[0, 0, 20:].any()
    assert (out.depth[out.mask.bool()] <= 1).all()


def test_bad_input_covers_nothing_and_stays_finite(backend):
    r, device = backend
    good = ndc_triangle([(2, 2), (20, 3), (4, 20)], 24)
    degenerate = ndc_triangle([(1, 1), (10, 10), (20, 20)], 24)  # collinear
    behind = ndc_triangle([(2, 2), (20, 3), (4, 20)], 24)
    behind[0, 1, 3] = -1.0  # one vertex behind the camera
    nan = ndc_triangle([(2, 2), (20, 3), (4, 20)], 24)
    nan[0, 2, 0] = float("nan")
    pos = torch.cat([good, degenerate, behind, nan], 1).to(device)
    tri = torch.arange(12, device=device).view(4, 3)
    out = r.rasterize(pos, tri, (24, 24))
    assert torch.isfinite(out.rast).all()
    assert set(out.triangle_id.unique().tolist()) <= {-1, 0, 2 if r.name == "nvdiffrast" else 0}
    attr = torch.randn(12, 3, device=device)
    assert torch.isfinite(r.interpolate(attr, out, tri)).all()
    # An empty mesh renders an empty image.
    empty = r.rasterize(pos, torch.zeros(0, 3, dtype=torch.long, device=device), (24, 24))
    assert empty.rast.shape == (1, 24, 24, 4) and not empty.rast.any()
    assert not r.interpolate(attr, empty, torch.zeros(0, 3, dtype=torch.long, device=device)).any()


def test_mismatched_shapes_raise():
    r = TorchRasterizer()
    pos, tri = random_scene(n_tri=2, batch=2)
    with pytest.raises(ValueError, match="pos must be"):
        r.rasterize(pos[0], tri, (8, 8))
    with pytest.raises(ValueError, match="tri must be"):
        r.rasterize(pos, tri.float(), (8, 8))
    with pytest.raises(ValueError, match="tri indices"):
        r.rasterize(pos, tri + 100, (8, 8))
    with pytest.raises(ValueError, match="resolution"):
        r.rasterize(pos, tri, (0, 8))
    out = r.rasterize(pos, tri, (8, 8))
    with pytest.raises(ValueError, match="attr batch"):
        r.interpolate(torch.zeros(3, 6, 2), out, tri)
    with pytest.raises(ValueError, match="texture batch"):
        r.texture(torch.zeros(3, 4, 4, 3), torch.zeros(2, 8, 8, 2))
    with pytest.raises(ValueError, match="uv must be"):
        r.texture(torch.zeros(1, 4, 4, 3), torch.zeros(2, 8, 8, 3))


def test_batch_is_per_image_and_attr_broadcasts():
    r = TorchRasterizer()
    pos, tri = random_scene(n_tri=20, batch=3, seed=5)
    out = r.rasterize(pos, tri, (16, 20))
    for b in range(3):
        single = r.rasterize(pos[b : b + 1], tri, (16, 20))
        assert torch.equal(single.rast, out.rast[b : b + 1])
    attr = torch.randn(pos.shape[1], 2)
    shared = r.interpolate(attr, out, tri)
    assert torch.allclose(shared, r.interpolate(attr[None], out, tri))
    assert torch.allclose(shared, r.interpolate(attr.expand(3, -1, -1), out, tri))


def test_texture_bilinear_at_texel_centres_and_clamped(backend):
    r, device = backend
    tex = torch.arange(12.0, device=device).view(1, 3, 4, 1)  # rows 0..2, columns 0..3
    u = torch.tensor([0.5 / 4, 1.5 / 4, 1.0 / 4, 0.0, 1.0], device=device)
    v = torch.tensor([0.5 / 3, 2.5 / 3, 0.5 / 3, 0.0, 1.0], device=device)
    out = r.texture(tex, torch.stack([u, v], -1).view(1, 1, 5, 2))[0, 0, :, 0]
    # centre of texel (0,0); centre of (2,1); halfway between (0,0) and (0,1); clamped corners
    assert torch.allclose(out, torch.tensor([0.0, 9.0, 0.5, 0.0, 11.0], device=device), atol=1e-5)


def test_gradcheck_interpolate_and_texture():
    """float64 gradients of interpolate (w.r.t. clip positions and attributes) and texture (w.r.t. both)."""
    r = TorchRasterizer()
    pos = ndc_triangle([(1, 1), (7, 2), (2, 7)], 8).double()
    pos = torch.cat([pos, ndc_triangle([(7, 7), (3, 6), (6, 2)], 8, z=0.3).double()], 1)
    pos = pos * torch.tensor([1.0, 1.0, 1.0, 1.0]).double()
    pos[0, :, :] *= torch.tensor([1.3, 0.8, 1.1, 0.9, 1.7, 1.2]).double()[:, None]  # perspective: varied w
    pos.requires_grad_(True)
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]])
    attr = torch.randn(1, 6, 2, dtype=torch.float64, requires_grad=True)

    def render(p, a):
        return r.interpolate(a, r.rasterize(p, tri, (8, 8)), tri)

    assert r.rasterize(pos, tri, (8, 8)).mask.sum() > 10
    assert torch.autograd.gradcheck(render, (pos, attr), eps=1e-6, atol=1e-5)

    tex = torch.rand(1, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    uv = (torch.rand(1, 3, 3, 2, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(r.texture, (tex, uv), eps=1e-6, atol=1e-5)


def test_antialias_blends_only_silhouettes_and_has_position_gradients(backend):
    r, device = backend
    pos = ndc_triangle([(3.3, 2.7), (28.6, 6.2), (7.1, 29.4)], 32).to(device).requires_grad_(True)
    tri = torch.tensor([[0, 1, 2]], device=device)
    out = r.rasterize(pos, tri, (32, 32))
    color = out.mask.expand(-1, -1, -1, 3).contiguous()
    aa = r.antialias(color, out, pos, tri)
    assert aa.shape == color.shape and torch.isfinite(aa).all()
    changed = (aa - color).abs().sum(-1)[0] > 1e-6
    assert changed.any()
    assert aa.min() >= 0 and aa.max() <= 1
    assert torch.equal(aa[0, 16, 8], color[0, 16, 8])  # interior untouched
    aa.sum().backward()
    assert pos.grad is not None and pos.grad.abs().sum() > 0


def test_get_rasterizer_selection():
    assert get_rasterizer("torch").name == "torch"
    assert get_rasterizer("auto", "cpu").name == "torch"
    with pytest.raises(RuntimeError, match="CUDA"):
        get_rasterizer("nvdiffrast", "cpu")
    with pytest.raises(ValueError, match="backend"):
        get_rasterizer("opengl")  # type: ignore[arg-type]


def test_raster_output_views():
    rast = torch.zeros(1, 2, 2, 4)
    rast[0, 0, 1] = torch.tensor([0.2, 0.3, 0.5, 4.0])
    out = RasterOutput(rast)
    assert out.triangle_id.tolist() == [[[-1, 3], [-1, -1]]]
    assert torch.allclose(out.barycentrics[0, 0, 1], torch.tensor([0.2, 0.3, 0.5]))
    assert out.barycentrics[0, 0, 0].abs().sum() == 0
    pixels, faces = out.covered()
    assert pixels.tolist() == [1] and faces.tolist() == [3]


@pytest.mark.gpu
@pytest.mark.skipif(not nvdiffrast_available(), reason="nvdiffrast/CUDA absent")
def test_parity_with_nvdiffrast():
    """Both backends agree on a random perspective scene (ids on >= 99% of pixels, values where ids agree)."""
    pos, tri = random_scene(n_tri=80, batch=2, seed=6)
    pos, tri = pos.cuda(), tri.cuda()
    ref, nv = get_rasterizer("torch", "cuda"), get_rasterizer("nvdiffrast", "cuda")
    a, b = ref.rasterize(pos, tri, (64, 96)), nv.rasterize(pos, tri, (64, 96))
    same = a.triangle_id == b.triangle_id
    assert same.float().mean() > 0.99
    assert torch.allclose(a.rast[same][:, :3], b.rast[same][:, :3], atol=1e-3)
    attr = torch.rand(pos.shape[1], 3, device="cuda")
    assert torch.allclose(ref.interpolate(attr, a, tri)[same], nv.interpolate(attr, b, tri)[same], atol=1e-3)
    tex = torch.rand(2, 16, 8, 3, device="cuda")
    uv = torch.rand(2, 10, 12, 2, device="cuda")
    assert torch.allclose(ref.texture(tex, uv), nv.texture(tex, uv), atol=1e-4)
    color = ref.interpolate(attr, a, tri)
    aa_ref, aa_nv = ref.antialias(color, a, pos, tri), nv.antialias(color, a, pos, tri)
    assert (aa_ref - aa_nv).abs().mean() < 0.02  # same idea, different edge heuristics: loose
