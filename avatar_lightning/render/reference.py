"""The naive rasterizer: every pixel tested against every triangle. A test oracle and benchmark baseline.

It shares the torch backend's snapping, tie rule and depth keys, so on any scene the two must agree exactly;
only the search differs (dense pixels x triangles here, per-row spans there).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .rasterizer import RasterOutput, check_raster_inputs
from .torch_backend import _DEPTH_SCALE, _EMPTY, SUBPIXEL, rast_at_pixels, setup_triangles

__all__ = ["rasterize_dense"]


def rasterize_dense(
    pos: Tensor,
    tri: Tensor,
    resolution: tuple[int, int],
    max_pairs: int = 1 << 22,
    rows: tuple[int, int] | None = None,
) -> RasterOutput:
    """Like ``TorchRasterizer.rasterize``, by a dense (pixels x triangles) inside test in chunks of pixels.

    ``max_pairs`` bounds the (pixel, triangle) pairs held at once (memory ~ 60 bytes each). ``rows``
    ``(start, stop)`` renders only that band of image rows (the rest stays empty): the benchmark times the
    baseline on a band and scales, the cost being the same for every row.
    """
    check_raster_inputs(pos, tri, resolution)
    height, width = int(resolution[0]), int(resolution[1])
    tri = tri.long()
    s = SUBPIXEL
    device = pos.device
    zbuf = torch.full((pos.shape[0] * height * width,), _EMPTY, dtype=torch.long, device=device)
    with torch.no_grad():
        ts = setup_triangles(pos, tri, height, width)
        Xa, Ya, dX, dY = ts.edges()
        z_opp = ts.z[:, [2, 0, 1]]
        jj, ii = torch.meshgrid(torch.arange(width, device=device), torch.arange(height, device=device), indexing="xy")
        px = (jj.reshape(-1) * s + s // 2)[:, None]  # (HW, 1) pixel centres, subpixel units
        py = (ii.reshape(-1) * s + s // 2)[:, None]
        for b in range(pos.shape[0]):  # a handful of images; the work inside is dense
            sel = (ts.batch == b).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            chunk = max(1, max_pairs // sel.numel())
            # Per-edge (T,) rows, so each test below is a plain (pixels, T) broadcast (no short axes).
            xa, ya, dx, dy, thr = (x[sel].t().contiguous() for x in (Xa, Ya, dX, dY, ts.threshold))
            zo = z_opp[sel].t().contiguous()
            inv_area, face = 1.0 / ts.area[sel].double(), ts.face[sel]
            first, last = (0, height) if rows is None else (max(rows[0], 0), min(rows[1], height))
            for start in range(first * width, last * width, chunk):
                stop = min(start + chunk, last * width)
                cx, cy = px[start:stop], py[start:stop]  # (P, 1)
                inside = torch.ones(cx.shape[0], face.shape[0], dtype=torch.bool, device=device)
                z = torch.zeros(cx.shape[0], face.shape[0], dtype=torch.float64, device=device)
                for k in range(3):  # the three edges
                    e = dx[k] * (cy - ya[k]) - dy[k] * (cx - xa[k])  # (P, T) edge function
                    inside &= e >= thr[k]
                    z += e * zo[k]
                z *= inv_area
                inside &= (z >= -1) & (z <= 1)
                q = ((z.clamp(-1, 1) + 1) * _DEPTH_SCALE).long()
                key = torch.where(inside, q * (1 << 32) + face, torch.full_like(q, _EMPTY))
                zbuf[b * height * width + start : b * height * width + stop] = key.amin(1)
    pixels = (zbuf != _EMPTY).nonzero().squeeze(1)
    faces = zbuf.index_select(0, pixels) & 0xFFFFFFFF
    return RasterOutput(rast_at_pixels(pos, tri, pixels, faces, height, width), pixels, faces)
