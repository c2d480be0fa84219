"""Textured-mesh rendering (I_orig of the paper's eq. 1) and its inverse, texture extraction (paper §4).

Both go through a ``Rasterizer``, so they run on either backend and are differentiable where it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .cameras import Cameras, broadcast_batch
from .mesh import Mesh, face_normals, vertex_normals
from .rasterizer import Rasterizer, RasterOutput, RasterSettings, get_rasterizer

__all__ = ["extract_texture", "fuse_views", "render_textured", "uv_to_clip"]


def _prepare(
    mesh: Mesh, vertices: Tensor, cameras: Cameras, settings: RasterSettings, rasterizer: Rasterizer | None
) -> tuple[Tensor, Cameras, Rasterizer]:
    if mesh.uvs is None:
        raise ValueError("this mesh has no uvs: texturing needs them")
    if vertices.dim() == 2:
        vertices = vertices.unsqueeze(0)
    if vertices.dim() != 3 or vertices.shape[1:] != (mesh.num_vertices, 3):
        raise ValueError(f"vertices must be (B, {mesh.num_vertices}, 3), got {tuple(vertices.shape)}")
    if settings.image_size is not None and settings.image_size != cameras.image_size:
        cameras = cameras.resized(*settings.image_size)
    cameras = cameras.to(vertices.device, vertices.dtype)
    if rasterizer is None:
        rasterizer = get_rasterizer(settings.backend, vertices.device)
    return vertices, cameras, rasterizer


def render_textured(
    mesh: Mesh,
    vertices: Tensor,
    texture: Tensor,
    cameras: Cameras,
    settings: RasterSettings | None = None,
    rasterizer: Rasterizer | None = None,
) -> tuple[Tensor, Tensor]:
    """Render the textured mesh: the image I_orig and its coverage mask.

    Args:
        mesh: triangles and UVs (its rest vertices are not used).
        vertices: ``(B, V, 3)`` posed vertices in world space (``mesh.deform``).
        texture: ``(B|1, H_t, W_t, C)`` UV texture in [0, 1], row 0 at v = 0.
        cameras: C cameras; the batch is ``max(B, C)`` (sizes equal, or one of them 1).
        settings: image size, backend, near/far, antialias.
        rasterizer: overrides ``settings.backend`` (e.g. one shared across calls).

    Returns:
        ``image (N, H, W, C)``, 0 where no triangle is visible, and ``mask (N, H, W, 1)`` in [0, 1]
        (exactly 0/1 unless antialiased). Row 0 is the top of the image.
    """
    settings = settings or RasterSettings()
    vertices, cameras, rasterizer = _prepare(mesh, vertices, cameras, settings, rasterizer)
    n = broadcast_batch(vertices.shape[0], len(cameras), "vertex sets")
    if texture.dim() != 4 or texture.shape[0] not in (1, n):
        raise ValueError(f"texture must be (1 or {n}, H_t, W_t, C), got {tuple(texture.shape)}")
    pos = cameras.to_clip(vertices, settings.near, settings.far)  # (N, V, 4)
    raster = rasterizer.rasterize(pos, mesh.triangles, (cameras.height, cameras.width))
    uv = rasterizer.interpolate(mesh.uvs.to(pos), raster, mesh.uv_faces)  # (N, H, W, 2)
    mask = raster.mask  # (N, H, W, 1)
    image = rasterizer.texture(texture.to(pos.dtype), uv) * mask
    if settings.antialias:
        both = rasterizer.antialias(torch.cat([image, mask], dim=-1), raster, pos, mesh.triangles)
        image, mask = both[..., :-1], both[..., -1:]
    return image, mask


def uv_to_clip(uvs: Tensor) -> Tensor:
    """``(V_uv, 2)`` uvs -> ``(1, V_uv, 4)`` clip positions that rasterize the UV layout as the texture.

    NDC (x, y) = (2u - 1, 2v - 1), so rasterizing at ``(T, T)`` samples texel (row i, column j) at its
    centre ``u = (j + 0.5) / T, v = (i + 0.5) / T``, the texel ``texture()`` reads there.
    """
    xy = uvs * 2 - 1
    return torch.cat([xy, torch.zeros_like(xy[:, :1]), torch.ones_like(xy[:, :1])], dim=-1).unsqueeze(0)


def extract_texture(
    mesh: Mesh,
    vertices: Tensor,
    image: Tensor,
    cameras: Cameras,
    texture_size: int | tuple[int, int],
    settings: RasterSettings | None = None,
    rasterizer: Rasterizer | None = None,
    depth_tolerance: float = 0.01,
) -> tuple[Tensor, Tensor]:
    """For each texel, the image colour it sees from the camera and how much to trust it.

    The UV layout is rasterized at the texture's size; each texel's triangle and barycentrics give its 3D
    point, which is projected into the camera and bilinearly sampled from ``image``. The weight is
    ``cos(angle between the surface normal and the direction to the camera)`` and 0 where the texel is not
    covered by the UV layout, its triangle faces away, it projects outside the image or nearer than
    ``settings.near``, or it is occluded: the pixel it falls in shows another triangle nearer than the
    texel by more than ``depth_tolerance`` (relative) plus the depth change across one pixel of a surface
    seen at the texel's angle. ``fuse_views`` combines several views.

    Args:
        mesh: triangles, UVs (and ``uv_triangles`` if any).
        vertices: ``(B, V, 3)`` posed vertices in world space.
        image: ``(N, H, W, 3)`` the camera images in [0, 1], row 0 at the top; ``N = max(B, C)``.
        cameras: C cameras of ``image``'s size.
        texture_size: T or ``(height, width)`` of the texture.

    Returns:
        ``colour (N, T, T, 3)`` (0 where the weight is 0) and ``weight (N, T, T, 1)`` in [0, 1].
    """
    settings = settings or RasterSettings()
    if settings.image_size is not None:
        raise ValueError("extract_texture reads the image at the cameras' size; leave image_size unset")
    vertices, cameras, rasterizer = _prepare(mesh, vertices, cameras, settings, rasterizer)
    n = broadcast_batch(vertices.shape[0], len(cameras), "vertex sets")
    if image.dim() != 4 or image.shape[:3] != (n, cameras.height, cameras.width):
        raise ValueError(
            f"image must be ({n}, {cameras.height}, {cameras.width}, C) to match vertices and cameras, "
            f"got {tuple(image.shape)}"
        )
    th, tw = (texture_size, texture_size) if isinstance(texture_size, int) else texture_size
    dtype = vertices.dtype
    verts = vertices.expand(n, -1, -1)
    tri = mesh.triangles

    # The camera's z-buffer as linear depth z_c (N, H, W, 1).
    pos = cameras.to_clip(verts, settings.near, settings.far)
    cam_raster = rasterizer.rasterize(pos, tri, (cameras.height, cameras.width))
    z_cam = cameras.world_to_camera(verts)[..., 2:3]  # (N, V, 1)
    zbuf = rasterizer.interpolate(z_cam, cam_raster, tri)

    # Each texel's triangle and barycentrics, from the UV layout rasterized as an image.
    uv_pos = uv_to_clip(mesh.uvs.to(device=verts.device, dtype=dtype))  # (1, V_uv, 4): same for all
    uv_raster = rasterizer.rasterize(uv_pos, mesh.uv_faces, (th, tw))
    uv_raster = RasterOutput(uv_raster.rast.expand(n, -1, -1, -1))
    point = rasterizer.interpolate(verts, uv_raster, tri)  # (N, T, T, 3) world position of each texel
    normal = F.normalize(rasterizer.interpolate(vertex_normals(verts, tri), uv_raster, tri), dim=-1)
    face = uv_raster.triangle_id  # (N, T, T)
    covered = face >= 0

    centre = cameras.centers.to(dtype).expand(n, -1)  # (N, 3)
    to_cam = F.normalize(centre[:, None, None, :] - point, dim=-1)
    cos = (normal * to_cam).sum(-1)  # (N, T, T)
    fn = F.pad(face_normals(verts, tri), (0, 0, 0, 1))  # (N, F + 1, 3): row F, zero, for empty texels
    index = torch.where(covered, face, tri.shape[0]).reshape(n, -1, 1).expand(-1, -1, 3)
    fn_texel = torch.gather(fn, 1, index).view(n, th, tw, 3)
    cos_face = (F.normalize(fn_texel, dim=-1) * to_cam).sum(-1)
    front = cos_face > 0

    pixels, depth = cameras.project_to_pixels(point.reshape(n, -1, 3))  # (N, T*T, 2), (N, T*T)
    pixels, depth = pixels.view(n, th, tw, 2), depth.view(n, th, tw)
    size = torch.tensor([cameras.width, cameras.height], dtype=dtype, device=verts.device)
    inside = ((pixels >= 0) & (pixels < size)).all(-1) & (depth > settings.near)
    uv_img = torch.nan_to_num(pixels / size)  # pixel centre j + 0.5 -> texel centre of the image
    colour = rasterizer.texture(image.to(dtype), uv_img)  # (N, T, T, C)

    # Occlusion: the z-buffer at the pixel the texel falls in (nearest: bilinear would mix surfaces).
    col = pixels[..., 0].nan_to_num(-1).floor().long().clamp(0, cameras.width - 1)
    row = pixels[..., 1].nan_to_num(-1).floor().long().clamp(0, cameras.height - 1)
    flat = (torch.arange(n, device=verts.device)[:, None, None] * cameras.height + row) * cameras.width + col
    # Its own triangle showing there settles it. Otherwise the depth must match the visible surface's, up to
    # the relative tolerance plus how much a surface seen at this angle changes depth across a pixel
    # (z tan(angle) / focal), since the texel and the pixel centre can be a pixel apart.
    z_seen = zbuf.reshape(-1)[flat]
    face_seen = cam_raster.triangle_id.reshape(-1)[flat]
    focal = cameras.K[:, :2, :2].diagonal(dim1=1, dim2=2).mean(-1).expand(n)[:, None, None]  # (N, 1, 1)
    tan = (1 - cos_face.square()).clamp_min(0).sqrt() / cos_face.clamp_min(0.1)
    slack = depth * (depth_tolerance + tan / focal)
    visible = (face_seen == face) | ((face_seen >= 0) & (depth <= z_seen + slack))

    ok = covered & front & inside & visible & torch.isfinite(cos)
    weight = torch.where(ok, cos.clamp(0, 1), torch.zeros_like(cos)).unsqueeze(-1)
    colour = torch.where(weight > 0, colour, torch.zeros_like(colour))
    return colour, weight


def fuse_views(colour: Tensor, weight: Tensor, dim: int = 0, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Weighted mean over views (axis ``dim``) of ``extract_texture`` outputs; the weight summed."""
    total = weight.sum(dim)
    return (colour * weight).sum(dim) / total.clamp_min(eps), total
