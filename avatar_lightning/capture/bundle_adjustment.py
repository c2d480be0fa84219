"""The capture's cameras estimated from FaceMesh landmarks when the user has no calibration file.

Estimating (:func:`estimate_calibration`): the world frame is camera 0's (R = I, t = 0). Intrinsics are a
default field of view (the guess ``ingest`` makes; optionally refined by one focal scale per camera, which
landmarks constrain only weakly). With several cameras a bundle adjustment (SciPy ``least_squares``, soft-L1
loss against slipped landmarks, exact sparse Jacobian) fits the other cameras' extrinsics, one rigid head pose
per sampled frame and the 3-D rigid landmarks (:data:`RIGID_LANDMARKS`, the ones expression hardly moves) to
every camera's FaceMesh landmarks in up to ``max_frames`` evenly sampled frames. The structure is free up to a
similarity (7 gauge freedoms); its centroid, orientation and RMS radius are held at the actor's reference
shape's, which is metric, so the rig comes out in metres.

Bundle adjustment needs a good start: per camera and frame the head's rotation and distance come in closed
form from FaceMesh's 3-D landmarks (weak perspective, ``fitting.initial_pose``); relative camera rotations are
chordal means over shared frames, translations medians, chained along a spanning tree of the cameras that see
the face together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeResult, least_squares
from scipy.sparse import csr_matrix
from scipy.spatial.transform import Rotation

from avatar_lightning.cache.manifest import CameraRecord
from avatar_lightning.capture.calibration import CALIBRATION_FORMAT, Calibration
from avatar_lightning.capture.fitting import initial_pose
from avatar_lightning.errors import CacheError
from avatar_lightning.features.mediapipe_landmarks import RIGID_LANDMARKS
from avatar_lightning.render.cameras import approximate_intrinsics

DEFAULT_INTRINSICS = "default field of view (f = 1.2 max(W, H)), principal point at the image centre: a guess"
LANDMARK_COUNTS = (468, 478)  # FaceMesh's mesh, with or without the 10 iris points
METHOD = "bundle adjustment of FaceMesh rigid landmarks (scipy least_squares)"
ROBUST_SCALE_PX = 2.0  # soft-L1 knee: FaceMesh's jitter is ~1 px, a slipped landmark tens of pixels
GAUGE_WEIGHT = 1e3  # residual weight of the 7 gauge constraints, against pixel residuals of weight 1
MAX_EVALUATIONS = 500
# Solve each trust-region step accurately: with lsmr's loose defaults the steps along the focal-distance valley
# are so short that the solver creeps and stops far from the optimum (centres off by ~10 cm when refining focal).
LSMR_OPTIONS = {"regularize": False, "atol": 1e-12, "btol": 1e-12}
ROTATION_OUTLIER_DEG = 10.0  # a frame's relative camera rotation this far from the mean is left out of the start
LINK_FRAMES = 3  # frames kept in the sample for every camera pair that ties the rig together


# ---------------------------------------------------------------------------------------------- estimating: checks
def _check_inputs(landmarks: np.ndarray, valid: np.ndarray, sizes: Sequence[tuple[int, int]],
                  names: Sequence[str], reference: np.ndarray) -> None:
    n, c = valid.shape if valid.ndim == 2 else (-1, -1)
    if (valid.ndim != 2 or landmarks.ndim != 4 or landmarks.shape[:2] != (n, c) or landmarks.shape[3] != 3
            or landmarks.shape[2] not in LANDMARK_COUNTS or reference.shape != (landmarks.shape[2], 3)
            or len(sizes) != c or len(names) != c or c == 0):
        raise CacheError(f"estimate_calibration: landmarks {list(landmarks.shape)} (want N, C, L, 3 with L = 468 or "
                         f"478), valid {list(valid.shape)} (want N, C), reference {list(reference.shape)} (want L, 3), "
                         f"{len(sizes)} sizes and {len(names)} names disagree")
    if not np.isfinite(landmarks[valid]).all():
        raise CacheError("estimate_calibration: landmarks of frames marked valid hold NaN or infinite values")
    if not np.isfinite(reference).all():
        raise CacheError("estimate_calibration: the reference shape holds NaN or infinite values")


def _camera_tree(valid: np.ndarray, names: Sequence[str]) -> list[tuple[int, int]]:
    """Edges ``(parent, child)`` linking every camera to camera 0 through frames both see a face in.

    Each camera joins by its strongest link (most shared frames: a maximum spanning tree, grown from camera
    0), so a pair that shares one frame is used only if nothing better exists.
    """
    for k, name in enumerate(names):
        if not valid[:, k].any():
            raise CacheError(f"camera {name} never sees a face, so its calibration cannot be estimated from "
                             "landmarks: pass --calibration FILE")
    shared = valid.T.astype(np.int64) @ valid.astype(np.int64)  # (C, C) frames seen by both
    joined, edges = [0], []
    while len(joined) < len(names):
        rest = [k for k in range(len(names)) if k not in joined]
        links = shared[np.ix_(joined, rest)]
        if links.max() == 0:
            raise CacheError(
                f"{_cameras(names, rest)} never {'sees' if len(rest) == 1 else 'see'} the face in a frame where "
                f"{_cameras(names, joined)} also {'sees' if len(joined) == 1 else 'see'} it, so where "
                f"{'it stands' if len(rest) == 1 else 'they stand'} relative to camera {names[0]} cannot be "
                f"estimated from landmarks: pass --calibration FILE ({CALIBRATION_FORMAT})")
        parent, child = np.unravel_index(int(links.argmax()), links.shape)
        edges.append((joined[parent], rest[child]))
        joined.append(rest[child])
    return edges


def _cameras(names: Sequence[str], indices: Sequence[int]) -> str:
    """``camera a`` or ``cameras a, b``, for messages."""
    return ("camera " if len(indices) == 1 else "cameras ") + ", ".join(names[k] for k in indices)


def _evenly(frames: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` of the sorted ``frames``, evenly spaced."""
    if len(frames) <= count:
        return frames
    return frames[np.linspace(0, len(frames) - 1, count).round().astype(int)]


def _sample_frames(valid: np.ndarray, edges: list[tuple[int, int]], max_frames: int) -> np.ndarray:
    """Frames for the adjustment: ``max_frames`` evenly among those >= 2 cameras see, plus a few per tree link.

    Even sampling alone could miss the only frames that tie a camera to the rig; those are added, so the
    sample may exceed ``max_frames`` by ``LINK_FRAMES`` per camera.
    """
    rows = set(_evenly(np.flatnonzero(valid.sum(1) >= 2), max_frames).tolist())
    for parent, child in edges:
        both = np.flatnonzero(valid[:, parent] & valid[:, child])
        if len(rows.intersection(both.tolist())) < min(LINK_FRAMES, len(both)):
            rows.update(_evenly(both, LINK_FRAMES).tolist())
    return np.array(sorted(rows), dtype=np.int64)


# ---------------------------------------------------------------------------------------------- estimating: start
def _mean_rotation(rotations: np.ndarray) -> np.ndarray:
    """Chordal L2 mean of ``(B, 3, 3)`` rotations: the rotation nearest their element-wise average."""
    u, _, vt = np.linalg.svd(rotations.mean(0))
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt


def _robust_mean_rotation(rotations: np.ndarray) -> np.ndarray:
    """:func:`_mean_rotation` of the rotations within ``ROTATION_OUTLIER_DEG`` of a first mean.

    A frame where FaceMesh fitted the face badly in one camera (a profile, a hand in front) would otherwise drag
    the camera's relative rotation; the adjustment can only repair a start that is roughly right.
    """
    first = _mean_rotation(rotations)
    angles = Rotation.from_matrix(rotations @ first.T).magnitude()  # (B,) radians
    keep = angles <= max(np.radians(ROTATION_OUTLIER_DEG), 3 * np.median(angles))
    return _mean_rotation(rotations[keep])


def _heads_in_cameras(landmarks: np.ndarray, valid: np.ndarray, reference: np.ndarray, Ks: list[np.ndarray]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Head -> camera rotations ``(S, C, 3, 3)`` and translations ``(S, C, 3)`` (NaN where unseen), closed form."""
    s, c = valid.shape
    rot, trans = np.full((s, c, 3, 3), np.nan), np.full((s, c, 3), np.nan)
    for k in range(c):
        rows = np.flatnonzero(valid[:, k])
        if len(rows):
            pose = initial_pose(landmarks[rows, k], reference, Ks[k], np.eye(3), np.zeros(3))  # (B, 6)
            rot[rows, k] = Rotation.from_rotvec(pose[:, :3]).as_matrix()
            trans[rows, k] = pose[:, 3:]
    return rot, trans


def _initial_rig(rot: np.ndarray, trans: np.ndarray, valid: np.ndarray, edges: list[tuple[int, int]]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """World (camera 0) -> camera rotations ``(C, 3, 3)`` and translations ``(C, 3)``, chained along ``edges``.

    Per link: R_kp = (robust chordal) mean over shared frames of R_k,head R_p,head^T; t_kp = median of
    T_k - R_kp T_p.
    """
    c = valid.shape[1]
    R, t = np.zeros((c, 3, 3)), np.zeros((c, 3))
    R[0] = np.eye(3)
    for parent, child in edges:
        both = valid[:, parent] & valid[:, child]
        rel = _robust_mean_rotation(rot[both, child] @ rot[both, parent].transpose(0, 2, 1))
        t_rel = np.median(trans[both, child] - trans[both, parent] @ rel.T, axis=0)
        R[child], t[child] = rel @ R[parent], rel @ t[parent] + t_rel
    return R, t


def _initial_heads(rot: np.ndarray, trans: np.ndarray, valid: np.ndarray, R: np.ndarray, t: np.ndarray
                   ) -> np.ndarray:
    """Head -> world poses ``(S, 6)`` (axis-angle, translation): each frame's cameras' estimates, averaged."""
    heads = np.zeros((valid.shape[0], 6))
    for i, seen in enumerate(valid):
        ks = np.flatnonzero(seen)
        rotations = R[ks].transpose(0, 2, 1) @ rot[i, ks]  # (B, 3, 3) head -> world per camera
        positions = np.einsum("bji,bj->bi", R[ks], trans[i, ks] - t[ks])  # R^T (T - t)
        heads[i] = np.r_[Rotation.from_matrix(_mean_rotation(rotations)).as_rotvec(), positions.mean(0)]
    return heads


# ---------------------------------------------------------------------------------------------- estimating: model
def _skew(v: np.ndarray) -> np.ndarray:
    """``(..., 3, 3)`` cross-product matrices: ``_skew(a) @ b == a x b``."""
    out = np.zeros((*v.shape[:-1], 3, 3))
    out[..., 0, 1], out[..., 0, 2], out[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    return out - np.swapaxes(out, -1, -2)


def _left_jacobian(rotvec: np.ndarray) -> np.ndarray:
    """``(B, 3, 3)`` SO(3) left Jacobians: ``exp(w + d) = exp(J(w) d) exp(w)`` to first order in ``d``."""
    theta = np.linalg.norm(rotvec, axis=-1)[:, None, None]  # (B, 1, 1)
    small = theta < 1e-6
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 0.5 - theta**2 / 24, (1 - np.cos(safe)) / safe**2)
    b = np.where(small, 1 / 6 - theta**2 / 120, (safe - np.sin(safe)) / safe**3)
    w = _skew(rotvec)
    return np.eye(3) + a * w + b * (w @ w)


@dataclass(frozen=True)
class _Problem:
    """The adjustment's fixed data. Observations are the ``P`` seen (frame, camera) pairs, each of the rigid points.

    Parameter vector: cameras 1..C-1 (axis-angle, t; world -> camera) | head pose per frame (axis-angle, t;
    head -> world) | structure ``(R, 3)`` in the head frame | log focal scale per camera (only when refined).
    Residuals: ``(P, R, 2)`` pixel errors, then the 7 weighted gauge residuals (:meth:`gauge`).
    """

    frame: np.ndarray  # (P,) sampled-frame index of each observation
    camera: np.ndarray  # (P,) camera index
    target: np.ndarray  # (P, R, 2) FaceMesh pixels
    Ks: np.ndarray  # (C, 3, 3) default intrinsics
    reference: np.ndarray  # (R, 3) the reference's rigid points, the gauge
    frames: int
    refine_focal: bool

    @property
    def cameras(self) -> int:
        return len(self.Ks)

    @property
    def points(self) -> int:
        return len(self.reference)

    def slices(self) -> tuple[slice, slice, slice, slice]:
        """Where cameras, head poses, structure and focal scales sit in the parameter vector."""
        c, s, r = self.cameras, self.frames, self.points
        a, b, d = 6 * (c - 1), 6 * (c - 1) + 6 * s, 6 * (c - 1) + 6 * s + 3 * r
        return slice(0, a), slice(a, b), slice(b, d), slice(d, d + (c if self.refine_focal else 0))

    def pack(self, R: np.ndarray, t: np.ndarray, heads: np.ndarray, structure: np.ndarray) -> np.ndarray:
        cams = np.concatenate([Rotation.from_matrix(R[1:]).as_rotvec(), t[1:]], 1)  # (C-1, 6)
        focal = np.zeros(self.cameras if self.refine_focal else 0)
        return np.concatenate([cams.reshape(-1), heads.reshape(-1), structure.reshape(-1), focal])

    def unpack(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                             np.ndarray]:
        """Camera rotvecs ``(C, 3)`` (camera 0's zero), rotations ``(C, 3, 3)``, translations ``(C, 3)``, head
        poses ``(S, 6)``, structure ``(R, 3)``, focal scales ``(C,)``."""
        cam_s, head_s, point_s, focal_s = self.slices()
        cams = np.concatenate([np.zeros((1, 6)), x[cam_s].reshape(-1, 6)])  # (C, 6)
        scale = np.exp(x[focal_s]) if self.refine_focal else np.ones(self.cameras)
        R = Rotation.from_rotvec(cams[:, :3]).as_matrix()
        return cams[:, :3], R, cams[:, 3:], x[head_s].reshape(-1, 6), x[point_s].reshape(-1, 3), scale

    def _forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Everything the residuals and the Jacobian share: points in the head, world and camera frames."""
        rotvec, R, t, heads, structure, scale = self.unpack(x)
        head_rot = Rotation.from_rotvec(heads[:, :3]).as_matrix()  # (S, 3, 3)
        turned = np.einsum("sij,rj->sri", head_rot, structure)  # (S, R, 3) Rot_head S
        world = turned + heads[:, None, 3:]
        Rp = R[self.camera]  # (P, 3, 3)
        rotated = np.einsum("pij,prj->pri", Rp, world[self.frame])  # (P, R, 3)
        cam = rotated + t[self.camera][:, None]
        depth = np.maximum(cam[..., 2], 1e-6)  # (P, R)
        K = self.Ks[self.camera]
        focal = K[:, [0, 1], [0, 1]] * scale[self.camera][:, None]  # (P, 2)
        offset = cam[..., :2] / depth[..., None] * focal[:, None]  # (P, R, 2) relative to the principal point
        return {"rotvec": rotvec, "R": Rp, "heads": heads, "head_rot": head_rot, "structure": structure,
                "turned": turned, "rotated": rotated, "cam": cam, "depth": depth, "focal": focal,
                "offset": offset, "uv": offset + K[:, None, [0, 1], [2, 2]]}

    def reprojection(self, x: np.ndarray) -> np.ndarray:
        """``(P, R, 2)`` projection minus FaceMesh, in pixels."""
        return self._forward(x)["uv"] - self.target

    def gauge(self, structure: np.ndarray) -> np.ndarray:
        """7 residuals, zero when the structure has the reference's centroid, orientation and RMS radius.

        The structure and the head poses are otherwise free up to a common similarity (moving, turning or
        growing the structure is undone by the poses and the rig); these pin the metric reference's.
        """
        ref_centre = self.reference.mean(0)
        ref, own = self.reference - ref_centre, structure - structure.mean(0)
        radius = np.sqrt((ref**2).sum(1).mean())
        twist = np.cross(own, ref).sum(0) / (len(ref) * radius**2)  # zero when no rotation aligns them better
        return np.r_[(structure.mean(0) - ref_centre) / radius, twist, np.sqrt((own**2).sum(1).mean()) / radius - 1]

    def residuals(self, x: np.ndarray) -> np.ndarray:
        structure = x[self.slices()[2]].reshape(-1, 3)
        return np.concatenate([self.reprojection(x).reshape(-1), GAUGE_WEIGHT * self.gauge(structure)])

    def _gauge_jacobian(self, structure: np.ndarray) -> np.ndarray:
        """``(7, R, 3)`` derivative of :meth:`gauge` (unweighted) with respect to the structure."""
        r = self.points
        ref = self.reference - self.reference.mean(0)
        own = structure - structure.mean(0)
        radius = np.sqrt((ref**2).sum(1).mean())
        rms = np.sqrt((own**2).sum(1).mean())
        centre = np.broadcast_to(np.eye(3)[:, None] / (r * radius), (3, r, 3))
        twist = -np.transpose(_skew(ref), (1, 0, 2)) / (r * radius**2)  # (3, R, 3): d(own_j x ref_j)/d own_j
        size = own[None] / (r * rms * radius)
        return np.concatenate([centre, twist, size])

    def jacobian(self, x: np.ndarray) -> csr_matrix:
        """The residuals' exact Jacobian, sparse: a pixel depends on its camera, frame, point and focal scale.

        Rotations are differentiated through the SO(3) left Jacobian, ``d(exp(w) v)/dw = -[exp(w) v]x J(w)``.
        """
        f = self._forward(x)
        cam_s, head_s, point_s, focal_s = self.slices()
        p, r = len(self.frame), self.points
        rows = np.arange(p * r * 2).reshape(p, r, 2)
        d_cam = np.zeros((p, r, 2, 3))  # d(pixel) / d(point in the camera frame)
        d_cam[..., 0, 0] = f["focal"][:, None, 0] / f["depth"]
        d_cam[..., 1, 1] = f["focal"][:, None, 1] / f["depth"]
        d_cam[..., :, 2] = -f["offset"] / f["depth"][..., None]
        d_world = d_cam @ f["R"][:, None]  # (P, R, 2, 3)
        head_jl = _left_jacobian(f["heads"][:, :3])[self.frame][:, None]  # (P, 1, 3, 3)
        head = head_s.start + 6 * self.frame  # (P,) first column of each observation's head pose
        point = point_s.start + 3 * np.arange(r)  # (R,) first column of each structure point
        entries = [
            _block(rows, head[:, None], -d_world @ _skew(f["turned"][self.frame]) @ head_jl),
            _block(rows, head[:, None] + 3, d_world),
            _block(rows, np.broadcast_to(point, (p, r)), d_world @ f["head_rot"][self.frame][:, None]),
        ]
        moved = self.camera > 0  # camera 0 is the world frame: it has no parameters
        if moved.any():
            cam_jl = _left_jacobian(f["rotvec"][self.camera[moved]])[:, None]
            camera = (cam_s.start + 6 * (self.camera[moved] - 1))[:, None]
            entries.append(_block(rows[moved], camera, -d_cam[moved] @ _skew(f["rotated"][moved]) @ cam_jl))
            entries.append(_block(rows[moved], camera + 3, d_cam[moved]))
        if self.refine_focal:
            focal = np.broadcast_to((focal_s.start + self.camera)[:, None, None], rows.shape)
            entries.append((rows.reshape(-1), focal.reshape(-1), f["offset"].reshape(-1)))
        gauge = GAUGE_WEIGHT * self._gauge_jacobian(f["structure"])  # (7, R, 3)
        entries.append(_block(p * r * 2 + np.arange(7)[:, None, None], np.broadcast_to(point, (7, r)),
                              gauge[:, :, None]))
        row, col, val = (np.concatenate([e[i] for e in entries]) for i in range(3))
        return csr_matrix((val, (row, col)), shape=(p * r * 2 + 7, focal_s.stop))


def _block(rows: np.ndarray, first: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COO triplets of a 3-column block: ``value (..., A, 3)`` at rows ``rows (..., A)``, columns ``first + 0..2``.

    ``first`` broadcasts against ``rows`` without its last axis (one first column per observation).
    """
    row = np.broadcast_to(rows[..., None], value.shape)
    col = np.broadcast_to(first[..., None, None] + np.arange(3), value.shape)
    return row.reshape(-1), col.reshape(-1), value.reshape(-1)


def _problem(landmarks: np.ndarray, valid: np.ndarray, Ks: list[np.ndarray], reference: np.ndarray,
             refine_focal: bool) -> _Problem:
    frame, camera = np.nonzero(valid)
    rigid = list(RIGID_LANDMARKS)
    return _Problem(frame=frame, camera=camera, target=landmarks[frame, camera][:, rigid, :2], Ks=np.stack(Ks),
                    reference=reference[rigid], frames=valid.shape[0], refine_focal=refine_focal)


def _errors(problem: _Problem, x: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per camera: rms and median landmark reprojection error in pixels, and how many landmarks were compared."""
    err = np.linalg.norm(problem.reprojection(x), axis=-1)  # (P, R)
    stats = {}
    for k, name in enumerate(names):
        e = err[problem.camera == k]
        stats[name] = {"rms_px": float(np.sqrt((e**2).mean())), "median_px": float(np.median(e)),
                       "landmarks": int(e.size)}
    return stats


def _adjust(problem: _Problem, x0: np.ndarray) -> OptimizeResult:
    """Robust least squares from ``x0``: soft-L1 with a knee of a few pixels, exact sparse Jacobian."""
    return least_squares(problem.residuals, x0, jac=problem.jacobian, method="trf", loss="soft_l1",
                         f_scale=ROBUST_SCALE_PX, x_scale="jac", max_nfev=MAX_EVALUATIONS, tr_options=LSMR_OPTIONS)


def _single_camera(names: Sequence[str], sizes: Sequence[tuple[int, int]]) -> Calibration:
    record = CameraRecord(names[0], approximate_intrinsics(*sizes[0]), np.eye(3).tolist(), [0.0, 0.0, 0.0],
                          *sizes[0])
    return Calibration([record], [None], True, {
        "method": "single camera: it is the world frame (R = I, t = 0), nothing to adjust",
        "world": f"camera {names[0]}'s frame", "intrinsics": DEFAULT_INTRINSICS})


def estimate_calibration(landmarks: np.ndarray, valid: np.ndarray, sizes: Sequence[tuple[int, int]],
                         names: Sequence[str], reference: np.ndarray, max_frames: int = 40,
                         refine_focal: bool = False) -> Calibration:
    """Cameras from FaceMesh landmarks seen by several cameras (see the module doc); world = camera 0's frame.

    Args:
        landmarks: ``(N, C, L, 3)`` FaceMesh per frame and camera: x, y in pixels (centres at +0.5), z its
            relative depth in x's pixel scale, away from the camera. L = 468 or 478.
        valid: ``(N, C)`` the camera saw a face in that frame.
        sizes, names: ``(width, height)`` and name per camera.
        reference: ``(L, 3)`` the actor's neutral landmarks in metres, head frame (x right, y down, z away from
            a frontal camera); its rigid points fix the scene's scale.
        max_frames: frames sampled (evenly, among frames >= 2 cameras see) for the adjustment.
        refine_focal: also fit one focal scale per camera. Landmarks of a face constrain it weakly (a longer
            focal and a farther rig look alike); without it the field of view is the default guess.

    Raises:
        CacheError: shapes disagree, valid landmarks hold NaN, a camera never sees a face, or some cameras never
            see it together with the rest (then only ``--calibration FILE`` can place them).
    """
    landmarks, valid = np.asarray(landmarks, np.float64), np.asarray(valid, bool)
    reference = np.asarray(reference, np.float64)
    _check_inputs(landmarks, valid, sizes, names, reference)
    if len(names) == 1:
        return _single_camera(names, sizes)
    edges = _camera_tree(valid, names)
    rows = _sample_frames(valid, edges, max_frames)
    obs, seen = landmarks[rows], valid[rows]  # (S, C, L, 3), (S, C)
    Ks = [np.array(approximate_intrinsics(w, h)) for w, h in sizes]

    rot, trans = _heads_in_cameras(obs, seen, reference, Ks)
    R0, t0 = _initial_rig(rot, trans, seen, edges)
    problem = _problem(obs, seen, Ks, reference, refine_focal)
    x0 = problem.pack(R0, t0, _initial_heads(rot, trans, seen, R0, t0), problem.reference)
    result = _adjust(problem, x0)
    _, R, t, _, _, scale = problem.unpack(result.x)
    records = []
    for k, name in enumerate(names):
        K = Ks[k].copy()
        K[:2, :2] *= scale[k]
        records.append(CameraRecord(name, K.tolist(), R[k].tolist(), t[k].tolist(), *sizes[k]))
    intrinsics = DEFAULT_INTRINSICS
    if refine_focal:
        intrinsics += "; focal refined per camera (weakly observable from landmarks)"
    report = {
        "method": METHOD, "world": f"camera {names[0]}'s frame", "intrinsics": intrinsics,
        "frames": len(rows), "frame_indices": rows.tolist(), "rigid_landmarks": problem.points,
        "links": [[names[p], names[k]] for p, k in edges],
        "iterations": int(result.njev), "evaluations": int(result.nfev), "converged": bool(result.status > 0),
        "rms_px_initial": {n: e["rms_px"] for n, e in _errors(problem, x0, names).items()},
        "reprojection": _errors(problem, result.x, names),
    }
    if refine_focal:
        report["focal_scale"] = {name: float(s) for name, s in zip(names, scale, strict=True)}
    return Calibration(records, [None] * len(names), True, report)
