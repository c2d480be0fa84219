"""The head template: a triangle mesh with UVs and a linear blend-shape basis, posed per frame.

``deform`` is the model of the capture cache's tracking (paper §4): blend shapes first, then the rigid pose
``T = (axis-angle, translation)`` about the world origin,
``X = Rot(pose[:, :3]) @ (v + sum_k b_k basis_k) + pose[:, 3:]``.
Triangles are wound counter-clockwise seen from outside, so ``(v1 - v0) x (v2 - v0)`` points outwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Mesh",
    "axis_angle_to_matrix",
    "ellipsoid_mesh",
    "face_normals",
    "plane_mesh",
    "vertex_normals",
]


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rodrigues: ``(..., 3)`` axis * angle (radians) -> ``(..., 3, 3)`` rotation; smooth at angle 0."""
    theta2 = (axis_angle * axis_angle).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = theta2 < 1e-8
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = theta2_safe.sqrt()
    # sin(t)/t and (1-cos(t))/t^2 with their Taylor series near 0, so gradients stay finite there.
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2_safe)
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*axis_angle.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a * skew + b * (skew @ skew)


def _check_vertices(vertices: Tensor) -> Tensor:
    if vertices.dim() == 2:
        vertices = vertices.unsqueeze(0)
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must be (B, V, 3) or (V, 3), got {tuple(vertices.shape)}")
    return vertices


def face_normals(vertices: Tensor, triangles: Tensor) -> Tensor:
    """``(B, F, 3)`` unnormalised face normals, length = twice the triangle's area."""
    v = _check_vertices(vertices)
    p = v[:, triangles]  # (B, F, 3, 3)
    return torch.linalg.cross(p[:, :, 1] - p[:, :, 0], p[:, :, 2] - p[:, :, 0])


def vertex_normals(vertices: Tensor, triangles: Tensor, eps: float = 1e-12) -> Tensor:
    """``(B, V, 3)`` unit vertex normals, the area-weighted mean of the adjacent faces' normals.

    Vertices on no (or only degenerate) triangles get a zero normal; NaN vertices poison only their own
    faces' neighbours, whose normals become zero rather than NaN.
    """
    v = _check_vertices(vertices)
    fn = face_normals(v, triangles)  # (B, F, 3)
    fn = torch.where(torch.isfinite(fn), fn, torch.zeros_like(fn))
    normals = torch.zeros_like(v)
    index = triangles.reshape(-1)  # (3F,)
    normals = normals.index_add(1, index, fn.repeat_interleave(3, dim=1))
    length = normals.norm(dim=-1, keepdim=True)
    return normals / length.clamp_min(eps)


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh with texture coordinates and a blend-shape basis.

    Attributes:
        vertices: ``(V, 3)`` float, rest pose (world units).
        triangles: ``(F, 3)`` int64 vertex indices, counter-clockwise seen from outside.
        uvs: ``(V_uv, 2)`` texture coordinates in [0, 1]; u to the right, v down from the texture's top row
            (texture row 0 is v = 0). Per vertex (``V_uv == V``) unless ``uv_triangles`` is given.
        uv_triangles: optional ``(F, 3)`` int64 indices into ``uvs`` (UV seams); defaults to ``triangles``.
        blend_basis: optional ``(K, V, 3)`` blend-shape offsets.
    """

    vertices: Tensor
    triangles: Tensor
    uvs: Tensor | None = None
    uv_triangles: Tensor | None = None
    blend_basis: Tensor | None = None

    def __post_init__(self) -> None:
        v, f = self.vertices, self.triangles
        if v.dim() != 2 or v.shape[1] != 3:
            raise ValueError(f"vertices must be (V, 3), got {tuple(v.shape)}")
        if f.dim() != 2 or f.shape[1] != 3 or f.dtype.is_floating_point:
            raise ValueError(f"triangles must be integer (F, 3), got {tuple(f.shape)} {f.dtype}")
        if f.dtype != torch.int64:
            object.__setattr__(self, "triangles", f := f.long())
        if f.numel() and (int(f.min()) < 0 or int(f.max()) >= v.shape[0]):
            raise ValueError(f"triangle indices must lie in [0, {v.shape[0]})")
        uv_tri = self.uv_triangles
        if uv_tri is not None:
            if uv_tri.shape != f.shape:
                raise ValueError(f"uv_triangles must be {tuple(f.shape)}, got {tuple(uv_tri.shape)}")
            object.__setattr__(self, "uv_triangles", uv_tri := uv_tri.long())
        if self.uvs is not None:
            if self.uvs.dim() != 2 or self.uvs.shape[1] != 2:
                raise ValueError(f"uvs must be (V_uv, 2), got {tuple(self.uvs.shape)}")
            if uv_tri is None and self.uvs.shape[0] != v.shape[0]:
                raise ValueError(
                    f"per-vertex uvs need one row per vertex ({v.shape[0]}), got {self.uvs.shape[0]}; "
                    "pass uv_triangles for a separate UV layout"
                )
            if uv_tri is not None and uv_tri.numel() and int(uv_tri.max()) >= self.uvs.shape[0]:
                raise ValueError(f"uv_triangles index past the {self.uvs.shape[0]} uvs")
        elif uv_tri is not None:
            raise ValueError("uv_triangles given without uvs")
        basis = self.blend_basis
        if basis is not None and (basis.dim() != 3 or basis.shape[1:] != v.shape):
            raise ValueError(f"blend_basis must be (K, {v.shape[0]}, 3), got {tuple(basis.shape)}")

    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[0]

    @property
    def num_triangles(self) -> int:
        return self.triangles.shape[0]

    @property
    def num_blend_shapes(self) -> int:
        return 0 if self.blend_basis is None else self.blend_basis.shape[0]

    @property
    def uv_faces(self) -> Tensor:
        """``(F, 3)`` indices into ``uvs``: ``uv_triangles`` if given, else ``triangles``."""
        return self.triangles if self.uv_triangles is None else self.uv_triangles

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Mesh:
        """Moved to ``device``; ``dtype`` applies to the float tensors only."""

        def move(x: Tensor | None, floating: bool) -> Tensor | None:
            if x is None:
                return None
            return x.to(device=device, dtype=dtype if floating else None)

        return Mesh(
            move(self.vertices, True),
            move(self.triangles, False),
            move(self.uvs, True),
            move(self.uv_triangles, False),
            move(self.blend_basis, True),
        )

    def deform(self, blend_weights: Tensor | None = None, pose: Tensor | None = None) -> Tensor:
        """Posed vertices ``(B, V, 3)`` in world space.

        Args:
            blend_weights: ``(B, K)`` weights b of the blend-shape basis (None: rest shape).
            pose: ``(B, 6)`` rigid motion T, axis-angle (radians) then translation, applied about the
                origin after the blend shapes (None: identity).
        """
        batch = {x.shape[0] for x in (blend_weights, pose) if x is not None}
        if len(batch) > 1:
            raise ValueError(f"blend_weights and pose disagree on the batch size: {sorted(batch)}")
        b = batch.pop() if batch else 1
        v = self.vertices.unsqueeze(0).expand(b, -1, -1)
        if blend_weights is not None:
            k = self.num_blend_shapes
            if blend_weights.dim() != 2 or blend_weights.shape[1] != k:
                raise ValueError(f"blend_weights must be (B, {k}), got {tuple(blend_weights.shape)}")
            if k:
                basis = self.blend_basis.to(blend_weights.dtype)  # (K, V, 3)
                v = v + torch.einsum("bk,kvc->bvc", blend_weights, basis)
        if pose is not None:
            if pose.dim() != 2 or pose.shape[1] != 6:
                raise ValueError(f"pose must be (B, 6) axis-angle + translation, got {tuple(pose.shape)}")
            rot = axis_angle_to_matrix(pose[:, :3])  # (B, 3, 3)
            v = v @ rot.transpose(1, 2) + pose[:, None, 3:]
        return v

    def vertex_normals(self, vertices: Tensor | None = None) -> Tensor:
        """``(B, V, 3)`` unit area-weighted normals of ``vertices`` (default: the rest pose, B = 1)."""
        return vertex_normals(self.vertices if vertices is None else vertices, self.triangles)


def plane_mesh(rows: int = 1, cols: int = 1, size: float = 1.0, z: float = 0.0) -> Mesh:
    """A ``size x size`` square in the plane ``z`` centred on the z axis, ``2 rows cols`` triangles.

    uv (0, 0) is the corner at (-size/2, -size/2): with the default y-down camera looking along +z, the
    plane is seen with texture row 0 at the top of the image. Normals point to -z, towards such a camera.
    """
    v_lin = torch.linspace(0, 1, rows + 1)
    u_lin = torch.linspace(0, 1, cols + 1)
    vv, uu = torch.meshgrid(v_lin, u_lin, indexing="ij")
    uvs = torch.stack([uu, vv], -1).reshape(-1, 2)
    xyz = torch.stack([(uu - 0.5) * size, (vv - 0.5) * size, torch.full_like(uu, z)], -1).reshape(-1, 3)
    idx = torch.arange((rows + 1) * (cols + 1)).reshape(rows + 1, cols + 1)
    a, b = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1)
    c, d = idx[1:, :-1].reshape(-1), idx[1:, 1:].reshape(-1)
    # a-c-b and b-c-d: (c-a) x (b-a) ~ y x x = -z, i.e. facing a camera at -z looking along +z.
    tri = torch.cat([torch.stack([a, c, b], -1), torch.stack([b, c, d], -1)])
    return Mesh(xyz, tri, uvs)


def ellipsoid_mesh(rings: int = 16, segments: int = 32, radii: tuple[float, float, float] = (0.08, 0.11, 0.1)) -> Mesh:
    """A closed UV-mapped ellipsoid (a head-sized stand-in), ``2 segments (rings - 1)`` triangles.

    u follows the longitude, v the latitude from the top (-y, OpenCV up) to the bottom pole; the seam
    column of vertices is duplicated so UVs stay per vertex.
    """
    lat = torch.linspace(0, math.pi, rings + 1)  # 0 = top pole (-y)
    lon = torch.linspace(0, 2 * math.pi, segments + 1)
    la, lo = torch.meshgrid(lat, lon, indexing="ij")
    x = radii[0] * torch.sin(la) * torch.sin(lo)
    y = -radii[1] * torch.cos(la)
    z = -radii[2] * torch.sin(la) * torch.cos(lo)  # lon 0 faces a camera at -z
    xyz = torch.stack([x, y, z], -1).reshape(-1, 3)
    uvs = torch.stack([lo / (2 * math.pi), la / math.pi], -1).reshape(-1, 2)
    idx = torch.arange((rings + 1) * (segments + 1)).reshape(rings + 1, segments + 1)
    a, b = idx[:-1, :-1], idx[:-1, 1:]
    c, d = idx[1:, :-1], idx[1:, 1:]
    top = torch.stack([a[1:], c[1:], b[1:]], -1).reshape(-1, 3)  # skip the degenerate pole row
    bottom = torch.stack([b[:-1], c[:-1], d[:-1]], -1).reshape(-1, 3)
    return Mesh(xyz, torch.cat([top, bottom]), uvs)
