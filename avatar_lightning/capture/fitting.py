"""Per-frame head pose T and blend-shape weights b from landmarks in every camera (paper §4's tracking step).

The model is the cache's: ``X = Rot(pose[:3]) (v + sum_k b_k basis_k) + pose[3:]`` (``Mesh.deform``), seen by
the calibrated cameras. Its 468 landmark vertices are projected into every camera that saw a face and compared
with FaceMesh's landmarks there. We minimise, over a chunk of frames at once,

    sum_frames mean_landmarks huber(|projection - landmark| / face height)
    + smoothness: (theta_t - theta_{t-1})' S (theta_t - theta_{t-1})   (rotation, translation, weights)
    + a small pull of the weights towards 0 (shapes that barely move a landmark stay off),

with b kept in [0, 1], by Gauss-Newton with Levenberg damping and iteratively re-weighted Huber weights. The
Jacobian comes from ``torch.func`` (forward mode, vmapped over frames); the smoothness couples neighbouring frames,
so each step solves one banded system per chunk (dense here: 64 frames x 23 parameters is small). The first
frame of a chunk is tied to the last solution of the previous one, so chunks join without seams.

Pose initialisation is closed form: a similarity Procrustes fit of the template to FaceMesh's 3-D landmarks in
the camera that sees the face best (weak perspective), then refined by the fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch import Tensor

from avatar_lightning.features.mediapipe_landmarks import similarity_transform
from avatar_lightning.render.mesh import axis_angle_to_matrix
from avatar_lightning.synth.face import CHIN, FOREHEAD, NUM_LANDMARKS

Progress = Callable[[str, int, int], None]
VISIBLE_COS, VISIBLE_RAMP = 0.15, 0.2  # a landmark counts fully from cos 0.35 (69 degrees), not at all below 0.15


@dataclass(frozen=True)
class FitSettings:
    """Weights of the tracking objective and solver settings (units: face heights, radians, metres, weights).

    Attributes:
        iterations: Gauss-Newton steps per chunk.
        chunk: frames solved jointly.
        huber: residual (in face heights) beyond which a landmark counts linearly (robust to FaceMesh slips).
        smooth_rotation, smooth_translation, smooth_blend: cost of a unit change between consecutive frames.
        blend_prior: cost of a unit weight (keeps near-invisible shapes at 0).
        damping: Levenberg damping, relative to the diagonal.
    """

    iterations: int = 5
    chunk: int = 64
    huber: float = 0.01
    smooth_rotation: float = 3e-3
    smooth_translation: float = 0.3
    smooth_blend: float = 2e-5
    blend_prior: float = 2e-6
    damping: float = 1e-3

    def for_personal_shapes(self) -> FitSettings:
        """The objective once the actor's own shapes are in the rig (:mod:`.personal_shapes`): no pull towards 0
        and a quarter of the weights' smoothness. Both were set for the semantic rig, where they keep shapes that
        barely move a landmark off; on the personal rig they damp the actor's real motion (on the shared anchor's
        held-out tail with 8 personal pairs, the tracked mesh's spread of FaceMesh's measures: 0.65 with them, 0.79
        without)."""
        return replace(self, blend_prior=0.0, smooth_blend=self.smooth_blend / 4)

    def without_smoothing(self) -> FitSettings:
        """The same objective for frames far apart in time (a sample), where smoothness would be wrong."""
        return replace(self, smooth_rotation=0.0, smooth_translation=0.0, smooth_blend=0.0)


@dataclass(frozen=True)
class FitResult:
    """``pose (N, 6)``, ``blend_weights (N, K)`` float32; ``rms (N, C)`` reprojection error in pixels (NaN: no face);
    ``face_height (N, C)`` pixels; ``fitted (N,)`` frames some camera saw (the rest are interpolated)."""

    pose: np.ndarray
    blend_weights: np.ndarray
    rms: np.ndarray
    face_height: np.ndarray
    fitted: np.ndarray


@dataclass(frozen=True)
class RigCameras:
    """K, R, t of the capture's cameras stacked: ``(C, 3, 3)``, ``(C, 3, 3)``, ``(C, 3)`` float64."""

    K: Tensor
    R: Tensor
    t: Tensor

    @classmethod
    def from_records(cls, records: list) -> RigCameras:
        def stack(key: str) -> Tensor:
            return torch.tensor(np.array([getattr(r, key) for r in records], np.float64))

        return cls(stack("K"), stack("R"), stack("t"))


def project(points: Tensor, cams: RigCameras) -> Tensor:
    """World ``points (..., V, 3)`` -> pixels ``(..., C, V, 2)`` in every camera."""
    xc = torch.einsum("cij,...vj->...cvi", cams.R, points) + cams.t[:, None, :]
    uvw = torch.einsum("cij,...cvj->...cvi", cams.K, xc)
    return uvw[..., :2] / uvw[..., 2:3].clamp_min(1e-6)


def face_heights(landmarks: np.ndarray) -> np.ndarray:
    """Forehead-to-chin length in pixels, ``(...)`` of landmarks ``(..., L, 2+)``: the unit of the residuals."""
    return np.linalg.norm(landmarks[..., FOREHEAD, :2] - landmarks[..., CHIN, :2], axis=-1)


def initial_pose(landmarks: np.ndarray, template_vertices: np.ndarray, K: np.ndarray, R: np.ndarray,
                 t: np.ndarray) -> np.ndarray:
    """Closed-form head poses ``(B, 6)`` in world space from one camera's FaceMesh landmarks ``(B, 478+, 3)``.

    Weak perspective: FaceMesh's (x, y, z) in pixels are a scaled, rotated copy of the face, so the similarity
    mapping them onto the template gives the head's rotation in the camera and the metres per pixel, hence the
    depth ``Z = f * metres_per_pixel``; the rigid landmarks' centroid sits on its pixel ray at that depth.
    """
    f = float(K[0, 0] + K[1, 1]) / 2
    centred = landmarks[:, :NUM_LANDMARKS].copy()
    centred[..., 0] -= K[0, 2]
    centred[..., 1] -= K[1, 2]
    scale, rotation, src_mean, dst_mean = similarity_transform(centred, template_vertices[:NUM_LANDMARKS])
    head_in_camera = rotation.transpose(0, 2, 1)  # template -> camera
    depth = f * scale  # (B,)
    pixel_centroid = src_mean[:, 0, :2]  # (B, 2), relative to the principal point
    centroid_cam = np.concatenate([pixel_centroid * (depth / f)[:, None], depth[:, None]], 1)  # (B, 3)
    translation_cam = centroid_cam - np.einsum("bij,j->bi", head_in_camera, dst_mean)
    rot_world = R.T[None] @ head_in_camera
    trans_world = (translation_cam - t[None]) @ R  # R^T (T - t) per row
    return np.concatenate([Rotation.from_matrix(rot_world).as_rotvec(), trans_world], 1)


class HeadTracker:
    """Fits pose and blend weights of a template to multi-camera landmarks, chunk by chunk (see the module doc).

    Args:
        vertices: ``(V, 3)`` template rest shape; only the first 468 (the FaceMesh landmarks) are fitted.
        blend_basis: ``(K, V, 3)``.
        cameras: the rig.
        settings: objective weights and solver settings.
    """

    def __init__(self, vertices: np.ndarray, blend_basis: np.ndarray, cameras: RigCameras,
                 settings: FitSettings | None = None, normals: np.ndarray | None = None) -> None:
        self.v = torch.tensor(vertices[:NUM_LANDMARKS], dtype=torch.float64)
        # Rest-pose outward normals: a landmark on the far side of the face is hidden from a camera, and FaceMesh
        # reports it anyway (a guess from its shape prior), so it must not pull the fit. None: all visible.
        self.normals = None if normals is None else torch.tensor(normals[:NUM_LANDMARKS], dtype=torch.float64)
        self.basis = torch.tensor(blend_basis[:, :NUM_LANDMARKS], dtype=torch.float64)
        self.cams = cameras
        self.settings = settings or FitSettings()
        self.num_blend = self.basis.shape[0]
        s = self.settings
        self.smooth = torch.tensor([s.smooth_rotation] * 3 + [s.smooth_translation] * 3
                                   + [s.smooth_blend] * self.num_blend, dtype=torch.float64)
        self.prior = torch.tensor([0.0] * 6 + [s.blend_prior] * self.num_blend, dtype=torch.float64)

    @property
    def num_params(self) -> int:
        return 6 + self.num_blend

    def visibility(self, theta: Tensor) -> Tensor:
        """``(B, C, 468)`` in [0, 1]: how squarely each landmark faces each camera (0 past ~80 degrees)."""
        if self.normals is None:
            return torch.ones(theta.shape[0], len(self.cams.K), NUM_LANDMARKS, dtype=theta.dtype)
        rot = axis_angle_to_matrix(theta[:, :3])
        normals = torch.einsum("bij,vj->bvi", rot, self.normals)  # (B, V, 3)
        points = torch.einsum("bij,vj->bvi", rot, self.v) + theta[:, None, 3:6]
        centres = -torch.einsum("cji,cj->ci", self.cams.R, self.cams.t)  # (C, 3): -R^T t
        to_camera = torch.nn.functional.normalize(centres[None, :, None] - points[:, None], dim=-1)
        cos = (to_camera * normals[:, None]).sum(-1)
        return ((cos - VISIBLE_COS) / VISIBLE_RAMP).clamp(0.0, 1.0)

    def landmarks_of(self, theta: Tensor) -> Tensor:
        """``theta (..., 6+K)`` -> projected landmark vertices ``(..., C, 468, 2)``."""
        shape = self.v + torch.einsum("...k,kvc->...vc", theta[..., 6:], self.basis)
        rot = axis_angle_to_matrix(theta[..., :3])
        posed = torch.einsum("...ij,...vj->...vi", rot, shape) + theta[..., None, 3:6]
        return project(posed, self.cams)

    def residuals(self, theta: Tensor, target: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """Residuals ``(B, C*468*2)`` in face heights and their Jacobian ``(B, C*468*2, P)``, analytically.

        ``d(Rot(w) p)/dw = -[Rot(w) p]_x J_l(w)`` (J_l: SO(3)'s left Jacobian); the projection's derivative is
        ``(K[:2] - (u, v) K[2]) / z``. A test checks them against ``torch.func.jacfwd``.
        """
        b = theta.shape[0]
        omega, blend = theta[:, :3], theta[:, 6:]
        shape = self.v + torch.einsum("bk,kvc->bvc", blend, self.basis)  # (B, V, 3)
        rot = axis_angle_to_matrix(omega)  # (B, 3, 3)
        rotated = torch.einsum("bij,bvj->bvi", rot, shape)
        posed = rotated + theta[:, None, 3:6]
        d_posed = torch.empty(*posed.shape, self.num_params, dtype=theta.dtype)  # (B, V, 3, P)
        d_posed[..., :3] = -_skew(rotated) @ _left_jacobian(omega)[:, None]
        d_posed[..., 3:6] = torch.eye(3, dtype=theta.dtype)
        d_posed[..., 6:] = torch.einsum("bij,kvj->bvik", rot, self.basis)
        xc = torch.einsum("cij,bvj->bcvi", self.cams.R, posed) + self.cams.t[None, :, None]  # (B, C, V, 3)
        z = xc[..., 2:3].clamp_min(1e-6)
        uv = torch.einsum("cij,bcvj->bcvi", self.cams.K[:, :2], xc) / z  # (B, C, V, 2)
        d_uv = (self.cams.K[None, :, None, :2, :] - uv[..., None] * self.cams.K[None, :, None, 2:3, :]) / z[..., None]
        d_cam = d_uv @ self.cams.R[None, :, None]  # (B, C, V, 2, 3)
        J = d_cam @ d_posed[:, None]  # (B, C, V, 2, P)
        unit = scale[:, :, None, None]
        r = ((uv - target) / unit).reshape(b, -1)
        return r, (J / unit[..., None]).reshape(b, -1, self.num_params)

    def solve_chunk(self, theta: Tensor, target: Tensor, seen: Tensor, scale: Tensor,
                    previous: Tensor | None) -> Tensor:
        """Refine ``theta (B, P)`` against ``target (B, C, 468, 2)`` pixels, ``seen (B, C)``, ``scale (B, C)`` px."""
        s = self.settings
        b, p = theta.shape
        scale = torch.where(seen, scale, torch.ones_like(scale))
        seen_xy = seen[:, :, None, None].expand(-1, -1, NUM_LANDMARKS, 2).reshape(b, -1).to(theta.dtype)
        coupling = np.full(b, 2.0)  # each frame's smoothness terms: to the frame before and after
        coupling[-1] -= 1
        if previous is None:
            coupling[0] -= 1
        smooth, prior = self.smooth.numpy(), self.prior.numpy()
        for _ in range(s.iterations):
            r, J = self.residuals(theta, target, scale)  # (B, M), (B, M, P)
            visible = self.visibility(theta).repeat_interleave(2, dim=2).reshape(b, -1)
            observed = seen_xy * visible
            norm = r.view(b, -1, 2).norm(dim=-1).repeat_interleave(2, dim=1)
            huber = torch.where(norm > s.huber, s.huber / norm.clamp_min(1e-12), torch.ones_like(norm))
            weights = observed * huber / observed.sum(1, keepdim=True).clamp_min(1.0)  # mean over observations
            JW = J * weights[:, :, None]
            blocks = (JW.transpose(1, 2) @ J).numpy() + np.diag(prior)  # (B, P, P)
            blocks[:, np.arange(p), np.arange(p)] += coupling[:, None] * smooth
            x = theta.numpy()
            grad = (JW * r[:, :, None]).sum(1).numpy() + prior * x  # (B, P)
            grad[1:] += smooth * (x[1:] - x[:-1])
            grad[:-1] -= smooth * (x[1:] - x[:-1])
            if previous is not None:
                grad[0] += smooth * (x[0] - previous.numpy())
            step = solve_block_tridiagonal(blocks, -smooth, -grad, s.damping)
            theta = theta + torch.from_numpy(step)
            theta[:, 6:] = theta[:, 6:].clamp(0.0, 1.0)
        return theta

    def fit(self, landmarks: Callable[[int, int], tuple[np.ndarray, np.ndarray]], num_frames: int,
            init_pose: np.ndarray, progress: Progress | None = None) -> FitResult:
        """Fit every frame. ``landmarks(start, stop)`` gives ``(B, C, 478+, 3)`` pixels and ``seen (B, C)``.

        ``init_pose (N, 6)``: a starting pose per frame (frames no camera saw may hold anything; they are
        interpolated from their fitted neighbours afterwards).
        """
        cams = len(self.cams.K)
        pose = np.zeros((num_frames, 6), np.float32)
        blend = np.zeros((num_frames, self.num_blend), np.float32)
        rms = np.full((num_frames, cams), np.nan, np.float32)
        heights = np.full((num_frames, cams), np.nan, np.float32)
        fitted = np.zeros(num_frames, bool)
        previous: Tensor | None = None
        last_blend = torch.zeros(self.num_blend, dtype=torch.float64)
        for start in range(0, num_frames, self.settings.chunk):
            stop = min(start + self.settings.chunk, num_frames)
            points, seen = landmarks(start, stop)
            points = points[:, :, :NUM_LANDMARKS]
            any_seen = seen.any(1)
            fitted[start:stop] = any_seen
            if not any_seen.any():
                previous = None
                continue
            rows = np.flatnonzero(any_seen)
            target = torch.tensor(np.nan_to_num(points[rows, :, :, :2]), dtype=torch.float64)
            seen_t = torch.tensor(seen[rows])
            h = face_heights(points[rows])  # (B, C)
            scale = torch.tensor(np.where(seen[rows], h, 1.0), dtype=torch.float64)
            theta = torch.zeros(len(rows), self.num_params, dtype=torch.float64)
            theta[:, :6] = torch.tensor(init_pose[start:stop][rows], dtype=torch.float64)
            theta[:, 6:] = last_blend
            contiguous = previous is not None and rows[0] == 0
            with torch.no_grad():
                theta = self.solve_chunk(theta, target, seen_t, scale, previous if contiguous else None)
                visible = self.visibility(theta) > 0.5  # the error where the landmark faces the camera
                squared = (self.landmarks_of(theta) - target).norm(dim=-1).square()  # (B, C, V)
                err = ((squared * visible).sum(-1) / visible.sum(-1).clamp_min(1)).sqrt()  # (B, C)
            frames = start + rows
            pose[frames] = theta[:, :6].numpy()
            blend[frames] = theta[:, 6:].numpy()
            rms[frames] = np.where(seen[rows], err.numpy(), np.nan)
            heights[frames] = np.where(seen[rows], h, np.nan)
            previous = theta[-1].clone() if rows[-1] == stop - start - 1 else None
            last_blend = theta[-1, 6:].clone()
            if progress:
                progress("fit pose and blend shapes", stop, num_frames)
        if not fitted.any():
            raise ValueError("no frame has a face in any camera: nothing to fit")
        pose, blend = interpolate_missing(pose, fitted), interpolate_missing(blend, fitted)
        return FitResult(pose=pose, blend_weights=blend, rms=rms, face_height=heights, fitted=fitted)


def interpolate_missing(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Rows where ``known`` is False filled by linear interpolation between known rows (held at the ends)."""
    if known.all():
        return values
    frames = np.arange(len(values))
    out = values.copy()
    for column in range(values.shape[1]):
        out[~known, column] = np.interp(frames[~known], frames[known], values[known, column])
    return out


def _skew(v: Tensor) -> Tensor:
    """``(..., 3)`` -> the cross-product matrices ``(..., 3, 3)``."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*v.shape, 3)


def _left_jacobian(omega: Tensor) -> Tensor:
    """SO(3)'s left Jacobian ``(B, 3, 3)`` of axis-angles ``(B, 3)``, with its series near 0."""
    theta2 = (omega * omega).sum(-1)[:, None, None]
    small = theta2 < 1e-8
    safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe.sqrt()
    a = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / safe)
    b = torch.where(small, 1.0 / 6 - theta2 / 120, (theta - torch.sin(theta)) / (safe * theta))
    k = _skew(omega)
    return torch.eye(3, dtype=omega.dtype) + a * k + b * (k @ k)


def solve_block_tridiagonal(diagonal: np.ndarray, off: np.ndarray, rhs: np.ndarray, damping: float) -> np.ndarray:
    """Solve ``H x = rhs`` for the symmetric block-tridiagonal H of the tracking objective.

    ``diagonal (B, P, P)`` blocks; every off-diagonal block is ``diag(off)`` (the smoothness coupling); Levenberg
    damping adds ``damping * diag(H)``. Banded Cholesky (LAPACK via SciPy): O(B P^3) instead of a dense O((B P)^3).
    """
    from scipy.linalg import solveh_banded

    b, p, _ = diagonal.shape
    n = b * p
    band = 2 * p - 1  # the farthest non-zero super-diagonal: block i's first column to block i+1's last
    ab = np.zeros((band + 1, n))
    rows, cols = np.triu_indices(p)
    for i in range(b):
        block = diagonal[i] + damping * np.diag(np.diag(diagonal[i]).clip(1e-12))
        ab[band + rows - cols, i * p + cols] = block[rows, cols]
    if b > 1:  # the coupling: H[i p + a, (i + 1) p + a] = off[a], a super-diagonal at distance p
        ab[band - p, p:] = np.tile(off, b - 1)
    return solveh_banded(ab, rhs.reshape(-1)).reshape(b, p)



def refine_rest_shape(tracker: HeadTracker, points: np.ndarray, seen: np.ndarray, pose: np.ndarray,
                      blend: np.ndarray, iterations: int = 3, prior: float = 1.0) -> np.ndarray:
    """The template's 468 rest vertices re-triangulated from several cameras, poses and weights held fixed.

    One view cannot tell the face's depth, so the template starts from FaceMesh's own 3-D guess; several
    calibrated views can. Each vertex independently minimises its reprojection error over the given frames and
    cameras (visible, Huber-weighted), plus ``prior`` (in face heights^2 per metre^2, times the observation count)
    pulling it towards where it was, by Gauss-Newton on 3x3 systems batched over vertices.

    Args:
        points: ``(F, C, 468+, 3)`` landmarks in pixels; seen: ``(F, C)``; pose ``(F, 6)``, blend ``(F, K)``.

    Returns:
        ``(468, 3)`` float64 rest vertices.
    """
    theta = torch.tensor(np.concatenate([pose, blend], 1), dtype=torch.float64)
    target = torch.tensor(np.nan_to_num(points[:, :, :NUM_LANDMARKS, :2]), dtype=torch.float64)  # (F, C, V, 2)
    scale = torch.tensor(np.where(seen, face_heights(points), 1.0), dtype=torch.float64)  # (F, C)
    weight = torch.tensor(seen, dtype=torch.float64)[:, :, None] * tracker.visibility(theta)  # (F, C, V)
    rot = axis_angle_to_matrix(theta[:, :3])  # (F, 3, 3)
    offsets = torch.einsum("fk,kvc->fvc", theta[:, 6:], tracker.basis)  # (F, V, 3)
    start = tracker.v.clone()
    rest = start.clone()
    cams, s = tracker.cams, tracker.settings
    for _ in range(iterations):
        posed = torch.einsum("fij,fvj->fvi", rot, rest + offsets) + theta[:, None, 3:6]
        xc = torch.einsum("cij,fvj->fcvi", cams.R, posed) + cams.t[None, :, None]  # (F, C, V, 3)
        z = xc[..., 2:3].clamp_min(1e-6)
        uv = torch.einsum("cij,fcvj->fcvi", cams.K[:, :2], xc) / z
        d_uv = (cams.K[None, :, None, :2, :] - uv[..., None] * cams.K[None, :, None, 2:3, :]) / z[..., None]
        J = d_uv @ cams.R[None, :, None] @ rot[:, None, None]  # (F, C, V, 2, 3): d uv / d rest vertex
        r = (uv - target) / scale[:, :, None, None]
        J = J / scale[:, :, None, None, None]
        huber = torch.where(r.norm(dim=-1) > s.huber, s.huber / r.norm(dim=-1).clamp_min(1e-12),
                            torch.ones_like(weight))
        w = (weight * huber)[..., None, None]  # (F, C, V, 1, 1)
        count = weight.sum((0, 1))[:, None, None].clamp_min(1.0)  # (V, 1, 1)
        A = (J.transpose(-1, -2) @ (w * J)).sum((0, 1)) + prior * count * torch.eye(3, dtype=torch.float64)
        g = (J.transpose(-1, -2) @ (w * r[..., None])).sum((0, 1))[..., 0] + prior * count[..., 0] * (rest - start)
        rest = rest - torch.linalg.solve(A, g)
    return rest.numpy()
