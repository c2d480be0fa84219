"""Pure-PyTorch rasterizer: vectorised on CPU and CUDA, no Python loop over triangles or pixels.

Visibility is exact and deterministic, like a GPU's: vertices are snapped to a 1/256-pixel integer grid
(``SUBPIXEL``), edge functions are exact integers with a top-left style tie rule (a pixel centre on an edge
shared by two triangles belongs to exactly one), and for every image row a triangle crosses the covered span
of columns is solved in closed form by exact division. Only covered pixels are enumerated; each
writes ``quantised depth << 32 | triangle`` into a per-pixel int64 z-buffer with ``scatter_reduce(amin)``,
so the nearest triangle wins and ties go to the lower index. That pass has no gradient; the winners'
barycentrics are then recomputed at the pixel centres with differentiable torch ops (homogeneous,
perspective-correct), which is what nvdiffrast's ``rast`` holds.

Culled before the z-buffer (they cover nothing): triangles with a non-finite coordinate, with a vertex at or
behind the camera plane (w <= 0; there is no clipping at w = 0), outside a guard band of
``GUARD_BAND_PIXELS`` around the image, of zero snapped area, or off screen. Pixels whose depth z/w lies
outside [-1, 1] (nearer than ``near`` or farther than ``far``) are discarded per pixel, which matches
clipping against those planes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .rasterizer import (
    Rasterizer,
    RasterOutput,
    check_interpolate_inputs,
    check_raster_inputs,
    check_texture_inputs,
)

__all__ = ["GUARD_BAND_PIXELS", "SUBPIXEL", "TorchRasterizer", "TriangleSetup", "setup_triangles"]

SUBPIXEL = 256  # sub-pixel grid of the snapped vertex positions (8 bits, as in GPU rasterizers)
GUARD_BAND_PIXELS = 32768  # |coordinate| bound that keeps every int64 edge product exact
_GUARD = GUARD_BAND_PIXELS * SUBPIXEL
_DEPTH_SCALE = 2**30 - 1  # (z/w + 1) * scale < 2**31: room for the triangle index in the low 32 bits
_EMPTY = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class TriangleSetup:
    """Per-triangle rasterization constants of the T triangles that survived culling.

    Attributes:
        batch: ``(T,)`` image index; face: ``(T,)`` triangle index into ``tri``.
        X, Y: ``(T, 3)`` int64 snapped vertex positions in 1/SUBPIXEL pixels, reordered so the area > 0.
        z: ``(T, 3)`` float64 NDC depth z/w of those vertices.
        area: ``(T,)`` int64 twice the snapped area (> 0).
        threshold: ``(T, 3)`` int64 0 or 1: edge k (vertex k to k+1) covers p if ``E_k(p) >= threshold``
            (0 on edges that own their boundary, the tie rule).
        rows: ``(T, 2)`` first and last image row whose pixel centres the triangle may cover (clamped to
            the image; a row lying exactly on a horizontal bottom edge is excluded, the tie rule).
    """

    batch: Tensor
    face: Tensor
    X: Tensor
    Y: Tensor
    z: Tensor
    area: Tensor
    threshold: Tensor
    rows: Tensor

    def edges(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(Xa, Ya, dX, dY)`` each ``(T, 3)``: edge k runs from ``(Xa, Ya)`` by ``(dX, dY)``.

        ``E_k(P) = dX (P_y - Ya) - dY (P_x - Xa)``, exactly negated on the twin edge of a neighbour.
        """
        dX = self.X.roll(-1, dims=1) - self.X
        dY = self.Y.roll(-1, dims=1) - self.Y
        return self.X, self.Y, dX, dY


def _ceil_div(a: Tensor, b: int) -> Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def setup_triangles(pos: Tensor, tri: Tensor, height: int, width: int) -> TriangleSetup:
    """Project, snap and cull; orient the survivors counter-clockwise (no gradient).

    Works on one ``(B, F)`` tensor per corner and coordinate: reductions over short axes are slow on CPU.
    """
    s = SUBPIXEL
    half = s // 2
    clip = pos.detach().double()
    corners = [clip.index_select(1, tri[:, k]) for k in range(3)]  # 3 x (B, F, 4)
    x, y, z, w = ([c[..., i] for c in corners] for i in range(4))  # each a list of 3 (B, F)
    total = sum(x) + sum(y) + sum(z) + sum(w)
    ok = torch.isfinite(total) & (w[0] > 0) & (w[1] > 0) & (w[2] > 0)  # (B, F); NaN/inf anywhere -> not ok
    inv_w = [1.0 / torch.where(ok, wk, torch.ones_like(wk)) for wk in w]
    sx = [(xk * iw + 1) * (0.5 * width * s) for xk, iw in zip(x, inv_w, strict=True)]
    sy = [(yk * iw + 1) * (0.5 * height * s) for yk, iw in zip(y, inv_w, strict=True)]
    zn = [zk * iw for zk, iw in zip(z, inv_w, strict=True)]
    for c in sx + sy:
        ok &= c.abs() < _GUARD  # also drops NaN from the division above
    z_min = torch.minimum(torch.minimum(zn[0], zn[1]), zn[2])
    z_max = torch.maximum(torch.maximum(zn[0], zn[1]), zn[2])
    ok &= (z_max >= -1) & (z_min <= 1)  # not wholly nearer than near or farther than far
    n_faces = tri.shape[0]
    sel = ok.reshape(-1).nonzero().squeeze(1)  # (T,) into the flattened (B, F)

    def gather(corner_values: list[Tensor]) -> Tensor:
        return torch.stack([c.reshape(-1).index_select(0, sel) for c in corner_values], 1)  # (T, 3)

    X, Y, zt = gather(sx).round().long(), gather(sy).round().long(), gather(zn)
    area = (X[:, 1] - X[:, 0]) * (Y[:, 2] - Y[:, 0]) - (Y[:, 1] - Y[:, 0]) * (X[:, 2] - X[:, 0])
    flip = (area < 0)[:, None]
    order = torch.tensor([0, 2, 1], device=pos.device)
    X = torch.where(flip, X[:, order], X)
    Y = torch.where(flip, Y[:, order], Y)
    zt = torch.where(flip, zt[:, order], zt)
    area = area.abs()
    dX = X.roll(-1, dims=1) - X
    dY = Y.roll(-1, dims=1) - Y
    # The edge's inward normal is (-dY, dX); an edge owns centres lying exactly on it when that normal points
    # right, or straight down. Twin edges have opposite normals, so exactly one of the pair owns them.
    owns = (dY < 0) | ((dY == 0) & (dX > 0))
    threshold = (~owns).long()
    # Rows whose pixel centres (i + 0.5) s lie in [Y_min, Y_max], clamped to the image. A horizontal bottom
    # edge (dY = 0, dX < 0) does not own its centres, so a row lying exactly on it is left out here; that
    # is the only place a horizontal edge constrains anything, so the row spans can ignore such edges.
    y_min = torch.minimum(torch.minimum(Y[:, 0], Y[:, 1]), Y[:, 2])
    y_max = torch.maximum(torch.maximum(Y[:, 0], Y[:, 1]), Y[:, 2])
    x_min = torch.minimum(torch.minimum(X[:, 0], X[:, 1]), X[:, 2])
    x_max = torch.maximum(torch.maximum(X[:, 0], X[:, 1]), X[:, 2])
    flat_bottom = ((dY == 0) & (dX < 0)).any(1)
    r0 = _ceil_div(y_min - half, s).clamp_min(0)
    r1 = torch.div(y_max - half - flat_bottom.long(), s, rounding_mode="floor").clamp_max(height - 1)
    c0 = _ceil_div(x_min - half, s).clamp_min(0)
    c1 = torch.div(x_max - half, s, rounding_mode="floor").clamp_max(width - 1)
    keep = ((area > 0) & (r0 <= r1) & (c0 <= c1)).nonzero().squeeze(1)
    sel = sel.index_select(0, keep)
    return TriangleSetup(
        batch=sel // n_faces,
        face=sel % n_faces,
        X=X.index_select(0, keep),
        Y=Y.index_select(0, keep),
        z=zt.index_select(0, keep),
        area=area.index_select(0, keep),
        threshold=threshold.index_select(0, keep),
        rows=torch.stack([r0, r1], dim=1).index_select(0, keep),
    )


def _visible_triangles(pos: Tensor, tri: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Linear pixel indices ``(N,)`` into ``B*H*W`` that some triangle covers, and the nearest one's index.

    Work is proportional to the covered pixels plus the rows the triangles span: per (triangle, row) the
    covered columns ``[j_lo, j_hi]`` are solved exactly, then each pixel only evaluates its depth key.
    Row bounds use float64 on integer values below 2**53: products and sums are exact, and a correctly
    rounded division of exact integers floors and ceils exactly (|quotient error| < the distance of any
    non-integer p/q from an integer, 1/|q|), so this matches the integer edge test bit for bit.
    """
    s = SUBPIXEL
    device = pos.device
    f64 = torch.float64
    empty = torch.zeros(0, dtype=torch.long, device=device)
    ts = setup_triangles(pos, tri, height, width)
    n_tri = ts.face.shape[0]
    if n_tri == 0:
        return empty, empty
    Xa, Ya, dX, dY = ts.edges()
    # Edge k at pixel (i, j), centre P = (j s + s/2, i s + s/2): E_k = alpha_k j + dX_k P_y + gamma_k, and the
    # pixel is covered iff alpha_k j >= need_k = threshold_k - gamma_k - dX_k P_y for all k.
    alpha = -dY * s  # (T, 3)
    gamma = -dX * Ya - dY * (s // 2 - Xa)
    base = (ts.threshold - gamma).to(f64)
    z_opp = ts.z[:, [2, 0, 1]]  # the vertex opposite edge k is k + 2
    inv_area = 1.0 / ts.area.to(f64)
    # z/w is affine in the image: z = sum_k E_k z_opp_k / area = z_dj j + z_dy P_y + z_c.
    z_dj = (alpha.to(f64) * z_opp).sum(1) * inv_area
    z_dy = (dX.to(f64) * z_opp).sum(1) * inv_area
    z_c = (gamma.to(f64) * z_opp).sum(1) * inv_area
    left, right = alpha > 0, alpha < 0  # a horizontal edge (alpha 0) bounds no span: see setup_triangles
    safe_alpha = torch.where(alpha == 0, torch.ones_like(alpha), alpha).to(f64)

    # One entry per (triangle, row).
    n_rows = ts.rows[:, 1] - ts.rows[:, 0] + 1
    row_tri = torch.repeat_interleave(n_rows)  # (R,)
    first_row = ts.rows[:, 0] - (torch.cumsum(n_rows, 0) - n_rows)
    row = torch.arange(row_tri.shape[0], device=device) + first_row.index_select(0, row_tri)
    py = (row * s + s // 2).to(f64)
    inf = torch.tensor(float("inf"), dtype=f64, device=device)
    j_lo = torch.zeros_like(py)
    j_hi = torch.full_like(py, width - 1)
    for k in range(3):  # the three edges; everything inside is one op over all rows
        bound = (base[:, k].index_select(0, row_tri) - dX[:, k].to(f64).index_select(0, row_tri) * py) / (
            safe_alpha[:, k].index_select(0, row_tri)
        )
        j_lo = torch.maximum(j_lo, torch.where(left[:, k].index_select(0, row_tri), bound.ceil(), -inf))
        j_hi = torch.minimum(j_hi, torch.where(right[:, k].index_select(0, row_tri), bound.floor(), inf))
    z0 = z_dy.index_select(0, row_tri) * py + z_c.index_select(0, row_tri)  # z at column 0
    slope = z_dj.index_select(0, row_tri)
    # Depth clipping (-1 <= z_dj j + z0 <= 1) only where a triangle crosses near or far: elsewhere z lies
    # between its vertices' values. Rounding slack is absorbed by the key's spare bit.
    crossing = ((ts.z < -1) | (ts.z > 1)).any(1)
    if bool(crossing.any()):
        rz = crossing.index_select(0, row_tri).nonzero().squeeze(1)
        m, c = slope[rz], z0[rz]
        flat_z = m == 0
        inv = 1.0 / torch.where(flat_z, torch.ones_like(m), m)
        ends = torch.stack([(-1 - c) * inv, (1 - c) * inv], 1).sort(1).values.clamp(-1, width)
        ends[flat_z] = torch.tensor([-1.0, float(width)], dtype=f64, device=device)
        lo_z = torch.where(flat_z & (c.abs() > 1), float(width), ends[:, 0].ceil())
        j_lo[rz] = torch.maximum(j_lo[rz], lo_z)
        j_hi[rz] = torch.minimum(j_hi[rz], ends[:, 1].floor())
    count = (j_hi - j_lo + 1).clamp_min(0).long()

    # One entry per covered pixel: k runs over all of them and j = k + shift of its row.
    pix_row = torch.repeat_interleave(count)  # (P,)
    n_pix = pix_row.shape[0]
    if n_pix == 0:
        return empty, empty
    shift = j_lo.long() - (torch.cumsum(count, 0) - count)
    lin_r = (ts.batch.index_select(0, row_tri) * height + row) * width + shift
    q_slope = slope * _DEPTH_SCALE
    q_row = (z0 + slope * shift.to(f64) + 1) * _DEPTH_SCALE
    # Few, reused pixel-sized buffers: fresh allocations (page faults) cost as much as the arithmetic.
    per_pix_int = torch.stack([lin_r, ts.face.index_select(0, row_tri)], 1).index_select(0, pix_row)  # (P, 2)
    per_pix_q = torch.stack([q_slope, q_row], 1).index_select(0, pix_row)
    del pix_row
    k_pix = torch.arange(n_pix, device=device, dtype=f64)
    lin = per_pix_int[:, 0].add_(k_pix.long())
    key = per_pix_q[:, 1].addcmul_(per_pix_q[:, 0], k_pix).long()
    del k_pix, per_pix_q
    # key = quantised depth << 32 | face, as * and + (int64 shifts and ors are slow on CPU): nearest first,
    # then the lower triangle index.
    key.mul_(1 << 32).add_(per_pix_int[:, 1])

    zbuf = torch.full((pos.shape[0] * height * width,), _EMPTY, dtype=torch.long, device=device)
    zbuf.scatter_reduce_(0, lin, key, reduce="amin")
    covered = (zbuf != _EMPTY).nonzero().squeeze(1)
    return covered, zbuf.index_select(0, covered) & 0xFFFFFFFF


def rast_at_pixels(pos: Tensor, tri: Tensor, pixels: Tensor, faces: Tensor, height: int, width: int) -> Tensor:
    """``(B, H, W, 4)`` rast with differentiable perspective-correct barycentrics of ``faces`` at ``pixels``.

    Homogeneous form: the barycentrics b of the clip-space triangle whose point projects to the pixel centre
    (x_p, y_p) satisfy ``sum b_k (x_k - x_p w_k) = 0``, ``sum b_k (y_k - y_p w_k) = 0``, ``sum b_k = 1``,
    so b is the normalised cross product of those two vectors; no division by w.
    """
    b, n_v = pos.shape[0], pos.shape[1]
    hw = height * width
    bi = pixels // hw
    rem = pixels - bi * hw
    i = rem // width
    j = rem - i * width
    xp = (2 * j + 1).to(pos.dtype) / width - 1  # (N,) NDC of the pixel centre
    yp = (2 * i + 1).to(pos.dtype) / height - 1
    # Gather the corners from a (4, B*V) copy of pos: every later op runs on contiguous (3, N) rows.
    corner = (tri.t().contiguous().index_select(1, faces) + bi * n_v).reshape(-1)  # (3N,) k-major
    x, y, z, w = pos.reshape(-1, 4).t().contiguous().index_select(1, corner).view(4, 3, -1).unbind(0)  # (3, N)
    a = x - xp * w
    c = y - yp * w
    b0 = a[1] * c[2] - a[2] * c[1]
    b1 = a[2] * c[0] - a[0] * c[2]
    b2 = a[0] * c[1] - a[1] * c[0]
    total = b0 + b1 + b2
    total = torch.where(total == 0, torch.ones_like(total), total)
    u, v = b0 / total, b1 / total
    with torch.no_grad():
        zw = (b0 * z[0] + b1 * z[1] + b2 * z[2]) / (b0 * w[0] + b1 * w[1] + b2 * w[2])
    values = torch.stack([u, v, zw, (faces + 1).to(pos.dtype)], dim=1)  # (N, 4)
    rast = torch.zeros(b * hw, 4, dtype=pos.dtype, device=pos.device)
    return rast.index_put((pixels,), values).view(b, height, width, 4)


def _edge_adjacency(tri: Tensor) -> Tensor:
    """``(F, 3)`` the triangle across edge k (vertex k to k+1), -1 on boundary or non-manifold edges."""
    f = tri.shape[0]
    a = tri
    b = tri.roll(-1, dims=1)
    n_v = int(tri.max()) + 1 if f else 1
    key = (torch.minimum(a, b) * n_v + torch.maximum(a, b)).reshape(-1)  # (3F,)
    key_sorted, order = key.sort()
    same_next = torch.zeros_like(key_sorted, dtype=torch.bool)
    same_next[:-1] = key_sorted[1:] == key_sorted[:-1]
    same_prev = torch.zeros_like(same_next)
    same_prev[1:] = same_next[:-1]
    run2_next = same_next & ~same_prev  # first of a pair...
    run2_next[:-1] &= ~(same_next[1:])  # ...and not of a longer run
    partner_sorted = torch.full_like(order, -1)
    first = run2_next.nonzero().squeeze(1)
    partner_sorted[first] = order[first + 1]
    partner_sorted[first + 1] = order[first]
    partner = torch.full_like(order, -1)
    partner[order] = partner_sorted
    return torch.where(partner >= 0, partner // 3, partner).view(f, 3)


def _pixel_centres(pixels: Tensor, height: int, width: int, dtype: torch.dtype) -> Tensor:
    """``(N, 2)`` (x, y) pixel-unit centres of linear pixel indices into ``B*H*W``."""
    rem = pixels % (height * width)
    return torch.stack([rem % width, rem // width], 1).to(dtype) + 0.5


def _edge_functions(verts: Tensor, points: Tensor, sign: Tensor) -> Tensor:
    """``(N, 3)`` float edge functions of triangles ``verts (N, 3, 2)`` at ``points (N, 2)``, > 0 inside."""
    va = verts
    edge = verts.roll(-1, dims=1) - va
    rel = points[:, None, :] - va
    return sign * (edge[..., 0] * rel[..., 1] - edge[..., 1] * rel[..., 0])


class TorchRasterizer(Rasterizer):
    """The pure-PyTorch backend (CPU or CUDA, float32 or float64)."""

    name = "torch"

    def rasterize(self, pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> RasterOutput:
        check_raster_inputs(pos, tri, resolution)
        height, width = int(resolution[0]), int(resolution[1])
        tri = tri.long()
        with torch.no_grad():
            pixels, faces = _visible_triangles(pos, tri, height, width)
        return RasterOutput(rast_at_pixels(pos, tri, pixels, faces, height, width), pixels, faces)

    def interpolate(self, attr: Tensor, raster: RasterOutput, tri: Tensor) -> Tensor:
        attr = check_interpolate_inputs(attr, raster, tri)
        b, h, w = raster.shape
        n_v, ch = attr.shape[1], attr.shape[2]
        pixels, face = raster.covered()
        if face.numel() and int(face.max()) >= tri.shape[0]:
            raise ValueError(f"raster refers to triangle {int(face.max())} but tri has {tri.shape[0]}")
        idx = tri.long().t().contiguous().index_select(1, face)  # (3, N)
        if attr.shape[0] > 1:
            idx += pixels // (h * w) * n_v
        a = attr.reshape(-1, ch).index_select(0, idx.reshape(-1)).view(3, -1, ch)  # (3, N, C)
        uv = raster.rast.reshape(-1, 4).index_select(0, pixels)
        u, v = uv[:, 0:1], uv[:, 1:2]
        values = u * a[0] + v * a[1] + (1 - u - v) * a[2]
        out = torch.zeros(b * h * w, ch, dtype=values.dtype, device=values.device)
        return out.index_put((pixels,), values).view(b, h, w, ch)

    def texture(self, tex: Tensor, uv: Tensor) -> Tensor:
        check_texture_inputs(tex, uv)
        b, h, w, _ = uv.shape
        grid = torch.nan_to_num(uv.to(tex.dtype)) * 2 - 1  # grid_sample: -1 / +1 are the outer texel edges
        if tex.shape[0] == 1 and b > 1:
            grid = grid.reshape(1, b * h, w, 2)  # one texture for the whole batch: one sampling call
        out = F.grid_sample(
            tex.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="border", align_corners=False
        )  # (B, C, H, W)
        return out.permute(0, 2, 3, 1).reshape(b, h, w, tex.shape[-1])

    def antialias(self, color: Tensor, raster: RasterOutput, pos: Tensor, tri: Tensor) -> Tensor:
        """nvdiffrast-style analytic antialiasing of silhouette edges.

        For each pair of horizontally or vertically adjacent pixels showing different triangles, the nearer
        pixel's triangle is tested for a silhouette edge (a boundary edge, or one whose neighbour faces the
        other way in the image) crossing the segment between the two centres at fraction ``t`` from the
        nearer centre. If the edge lies beyond the midpoint, the farther pixel takes ``t - 1/2`` of the
        nearer colour; otherwise the nearer pixel takes ``1/2 - t`` of the farther one. ``t`` is a
        differentiable function of the vertex positions, which is where position gradients come from.
        """
        check_raster_inputs(pos, tri)
        b, h, w = raster.shape
        if color.shape[:3] != (b, h, w):
            raise ValueError(f"color must be (B, H, W, C) = ({b}, {h}, {w}, C), got {tuple(color.shape)}")
        tri = tri.long()
        if tri.shape[0] == 0:
            return color
        face = raster.triangle_id  # (B, H, W)
        depth = torch.where(face >= 0, raster.rast[..., 2].detach(), torch.full_like(raster.rast[..., 2], 2.0))
        w_safe = torch.where(pos[..., 3:4] > 0, pos[..., 3:4], torch.ones_like(pos[..., 3:4]))
        scale = torch.tensor([w / 2, h / 2], dtype=pos.dtype, device=pos.device)
        screen = (pos[..., :2] / w_safe + 1) * scale  # (B, V, 2) pixels
        corners = screen[:, tri]  # (B, F, 3, 2)
        e1, e2 = corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0]
        facing = torch.sign(e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]).detach()  # (B, F)
        neighbour = _edge_adjacency(tri)  # (F, 3)

        flat = color.reshape(-1, color.shape[-1])
        delta = torch.zeros_like(flat)
        face_f, depth_f = face.reshape(-1), depth.reshape(-1)
        idx = torch.arange(b * h * w, device=color.device).view(b, h, w)
        for p_idx, q_idx in ((idx[:, :, :-1], idx[:, :, 1:]), (idx[:, :-1, :], idx[:, 1:, :])):
            p_idx, q_idx = p_idx.reshape(-1), q_idx.reshape(-1)
            differ = (face_f[p_idx] != face_f[q_idx]).nonzero().squeeze(1)
            p_idx, q_idx = p_idx[differ], q_idx[differ]
            p_front = depth_f[p_idx] <= depth_f[q_idx]
            front = torch.where(p_front, p_idx, q_idx)
            back = torch.where(p_front, q_idx, p_idx)
            tf = face_f[front]  # (N,) visible triangle of the nearer pixel
            bi = front // (h * w)
            verts = corners[bi, tf]  # (N, 3, 2)

            cf, cb = _pixel_centres(front, h, w, pos.dtype), _pixel_centres(back, h, w, pos.dtype)
            sign = facing[bi, tf][:, None]
            ef, eb = _edge_functions(verts, cf, sign), _edge_functions(verts, cb, sign)  # (N, 3), > 0 inside
            nb = neighbour[tf]  # (N, 3)
            nb_facing = facing[bi[:, None], nb.clamp_min(0)]
            silhouette = (nb < 0) | (nb_facing != sign)
            crossing = (ef.detach() >= 0) & (eb.detach() < 0) & silhouette
            denom = torch.where(crossing, ef - eb, torch.ones_like(ef))
            t = torch.where(crossing, ef / denom, torch.full_like(ef, 2.0))
            t, _ = t.min(1)
            hit = (t <= 1).nonzero().squeeze(1)
            t, front, back = t[hit], front[hit], back[hit]
            diff = flat[front] - flat[back]  # (M, C)
            to_back = (t - 0.5).clamp_min(0)[:, None] * diff
            to_front = -(0.5 - t).clamp_min(0)[:, None] * diff
            delta = delta.index_add(0, back, to_back).index_add(0, front, to_front)
        return (flat + delta).view_as(color)
