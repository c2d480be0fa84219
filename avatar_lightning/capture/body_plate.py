"""The body plate: the torso below the head as a layer that sways with the person, not a patch the U-Net paints.

A monocular clip of a talking person shows a torso that is never quite still: it sways a few pixels as the person
leans and nods. The clean plate (:mod:`.clean_plate`) keeps only what never moves, so where the torso sways the
re-render U-Net had to paint collar, shirt and tie from the head's position alone; it paints their average, a
blur (on the shared anchor the face box's error below the chin was 3x what a sharp, well-placed torso leaves).

Here, per camera:

- **the torso's sway** (:func:`track_torso`): a 2-D translation per frame, by OpenCV's ECC alignment of the band
  below the chin (face masked out, only where the body nearly always is: :func:`body_region`) against the torso's
  median appearance (one refinement pass with the median of the stabilised band);
- **the body plate** (:func:`estimate_body`): sampled frames moved back by their sway, the person's silhouette
  (MediaPipe's selfie segmentation) without the head; the per-pixel median of the body where it is body, and how
  often it is body (a soft mask);
- **the sway from the head pose** (:func:`fit_sway_from_pose`): a linear map, for animation, where there is a new
  head pose but no torso to track.

At a frame, the plate under the U-Net is the clean plate with the body plate laid over it where the body mask says,
both moved by the frame's sway (:func:`avatar_lightning.render.body.frame_plates`). Only translation: a torso that
turns or leans far is left to the U-Net. :func:`body_plates` is ``prepare``'s step: it writes all of it into the
cache, or says why a camera gets none.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from avatar_lightning.cache.layout import (
    body_mask_array,
    body_plate_array,
    clean_plate_array,
    frames_array,
    sway_from_pose_array,
    torso_sway_array,
)
from avatar_lightning.cache.manifest import CameraRecord
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.capture.clean_plate import head_mask
from avatar_lightning.capture.fitting import FitResult
from avatar_lightning.capture.head_shell import segment
from avatar_lightning.capture.tracking import evenly
from avatar_lightning.render import Cameras, Mesh

log = logging.getLogger(__name__)

# The band the torso is tracked in: from a little above the highest chin seen (this percentile of the frames' chin
# rows, less a share of the frame height) to the bottom of the frame; the face itself is masked out frame by frame.
CHIN_PERCENTILE = 5
BAND_MARGIN = 0.1
MIN_BAND = 0.1  # of the frame height: less torso below the chin than this is too little to track
FACE_GROWTH = 1.1  # the face hull masked out of the band, scaled about its centre (the jaw's shadow, stubble)
OUTLIER_PX = 3.0  # a frame's sway this far from the median of its 5 neighbours is a failed match
BODY_PROBABILITY = 0.5  # selfie segmentation's person probability above which a pixel is the person
FEATHER_PX = 2.0  # the body mask's edge is softened by a Gaussian of this sigma
PLATE_SAMPLE = 48  # training frames whose median is the body plate (and as many to check it on)
FACE_POINTS = 468  # FaceMesh's mesh points: the template's first vertices
REFERENCE_SAMPLE = 200  # frames whose median band is the torso's reference appearance
MAX_FAILED = 0.1  # a torso the match fails on in more of the frames than this is not tracked well enough
MIN_GAIN = 0.25  # the body plate must cut the clean plate's error over the body by at least this share
# Beside the face, hair and ears reach down to this share of the face's height above the chin; below that, outside
# the face, is neck, collar and shoulders (on the shared anchor, the collar's corners rise beside the jaw: leaving
# them to the U-Net cost 1.6 dB of the face box, measured by laying the body plate over the avatar's frames).
NECK_SPAN = 0.3
REGION_SHARE = 0.9  # the torso is matched where at least this share of the sampled frames showed body


@dataclass(frozen=True)
class TorsoSway:
    """``shifts (N, 2)`` float32 pixels (x right, y down): where each frame's torso lies relative to the body
    plate; ``band_top``: the first image row of the band tracked; ``failed``: frames the match did not converge on
    (they took their neighbours' sway); ``replaced``: frames whose sway was an outlier and was replaced."""

    shifts: np.ndarray
    band_top: int
    failed: int
    replaced: int


@dataclass(frozen=True)
class BodyPlate:
    """``plate (H, W, 3) uint8``: the body at zero sway; ``mask (H, W) uint8`` 0-255: where it is body."""

    plate: np.ndarray
    mask: np.ndarray
    frames_used: int

    @property
    def coverage(self) -> float:
        """The share of the image the body plate covers."""
        return float(self.mask.mean() / 255)


def band_top(chin_rows: np.ndarray, height: int) -> int | None:
    """The first row of the torso band for chins at ``chin_rows (N,)`` (pixels), or None where the frame shows
    less than :data:`MIN_BAND` of its height below the median chin (the face fills the frame: no torso to track)."""
    finite = chin_rows[np.isfinite(chin_rows)]
    if not len(finite) or height - np.median(finite) < MIN_BAND * height:
        return None
    return max(0, int(np.floor(np.percentile(finite, CHIN_PERCENTILE) - BAND_MARGIN * height)))


def face_mask(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(H, W) bool``: the face's hull from its points ``(V, 2)`` in pixels, grown by :data:`FACE_GROWTH`."""
    mask = np.zeros((height, width), np.uint8)
    finite = points[np.isfinite(points).all(1)]
    if len(finite) >= 3:
        centre = finite.mean(0)
        hull = cv2.convexHull(((finite - centre) * FACE_GROWTH + centre).astype(np.float32))
        cv2.fillConvexPoly(mask, np.round(hull).astype(np.int32), 1)
    return mask.astype(bool)


def translate(image: np.ndarray, shift: np.ndarray, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """``image`` moved by ``shift (2,)`` pixels (x, y), bilinear; uncovered pixels by ``border``."""
    matrix = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    return cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR, borderMode=border)


def body_region(person: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``(H, W) bool``: where the sampled frames (person probability ``person (S, H, W)``, face points ``faces (S,
    V, 2)``) nearly always show the body (:data:`REGION_SHARE` of them). The torso is matched there only: a
    backdrop beside it, which does not sway, would pull the sway towards zero (on a synthetic scene, matching
    within 4 % of the frame around the body seen shrank the sway by 8 %)."""
    height, width = person.shape[1:]
    body = np.stack([(p > BODY_PROBABILITY) & ~face_mask(f, width, height) for p, f in zip(person, faces, strict=True)])
    return body.mean(axis=0) >= REGION_SHARE


class _Band:
    """The torso band of frames: luminance below ``top``, with each frame's face (and what is never body) masked
    out."""

    def __init__(self, top: int, width: int, height: int, region: np.ndarray | None) -> None:
        self.top, self.width, self.height = top, width, height
        self.region = np.ones((height - top, width), bool) if region is None else region[top:]

    def __call__(self, frames: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(B, H, W, 3) uint8``, face points ``(B, V, 2)`` -> bands ``(B, h, W) float32``, torso ``(B, h, W)``
        bool."""
        gray = np.stack([cv2.cvtColor(np.ascontiguousarray(f[self.top :]), cv2.COLOR_RGB2GRAY) for f in frames])
        torso = np.stack([~face_mask(p, self.width, self.height)[self.top :] & self.region for p in faces])
        return gray.astype(np.float32), torso


def _match(reference: np.ndarray, band: np.ndarray, torso: np.ndarray) -> np.ndarray | None:
    """The translation ``(2,)`` that moves ``reference`` onto ``band`` over its ``torso`` pixels (OpenCV's ECC,
    a maintained sub-pixel image aligner that takes a mask, unlike phase correlation); None where it fails."""
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
    try:
        cv2.findTransformECC(reference, band, warp, cv2.MOTION_TRANSLATION, criteria, torso.astype(np.uint8), 5)
    except cv2.error:  # no convergence: too little structure
        return None
    return warp[:, 2].copy()


def _masked_median(bands: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per pixel, the median of ``bands (B, h, W)`` where ``keep``; the plain median where no frame keeps it."""
    median = np.ma.median(np.ma.masked_array(bands, mask=~keep), axis=0)
    return np.where(np.ma.getmaskarray(median), np.median(bands, axis=0), np.ma.filled(median, 0)).astype(np.float32)


def track_torso(frames: np.ndarray, faces: np.ndarray, reference_rows: np.ndarray,
                region: np.ndarray | None = None, chunk: int = 256) -> TorsoSway | None:
    """Each frame's torso translation against the median torso of ``reference_rows``.

    ``frames (N, H, W, 3) uint8`` (a memory map is read ``chunk`` frames at a time); ``faces (N, V, 2)``: each
    frame's face points in pixels (NaN: no face), masked out of the band; ``region (H, W) bool``: where the body may
    be (:func:`body_region`; None: anywhere below the chin). None where there is no band to track. Frames where
    the match fails take their neighbours' sway.
    """
    n, height, width = frames.shape[:3]
    seen = np.isfinite(faces).all(axis=(1, 2))
    top = band_top(faces[seen][..., 1].max(axis=1), height) if seen.any() else None
    if top is None or not len(reference_rows):
        return None
    band = _Band(top, width, height, region)
    picks = np.linspace(0, len(reference_rows) - 1, min(REFERENCE_SAMPLE, len(reference_rows))).round().astype(int)
    sample = np.unique(reference_rows[picks])
    sample_bands, sample_torso = band(np.asarray(frames[sample]), np.asarray(faces[sample]))
    reference = _masked_median(sample_bands, sample_torso)
    # one refinement: the median of the sample moved back by its first match (sharper than that of frames that sway)
    first = [_match(reference, b, t) for b, t in zip(sample_bands, sample_torso, strict=True)]
    if ok := [i for i, s in enumerate(first) if s is not None]:
        reference = _masked_median(
            np.stack([translate(sample_bands[i], -first[i]) for i in ok]),
            np.stack([translate(sample_torso[i].astype(np.float32), -first[i], cv2.BORDER_CONSTANT) > 0.5
                      for i in ok]))
    shifts = np.full((n, 2), np.nan, np.float32)
    for start in range(0, n, chunk):
        bands, torso = band(np.asarray(frames[start : start + chunk]), np.asarray(faces[start : start + chunk]))
        for i, (b, t) in enumerate(zip(bands, torso, strict=True)):
            if (found := _match(reference, b, t)) is not None:
                shifts[start + i] = found
    failed = ~np.isfinite(shifts).all(axis=1)
    if failed.all():
        return None
    for axis in range(2):  # failed matches take their neighbours' sway
        shifts[failed, axis] = np.interp(np.flatnonzero(failed), np.flatnonzero(~failed), shifts[~failed, axis])
    smoothed = _running_median(shifts, 5)
    outliers = np.abs(shifts - smoothed).max(axis=1) > OUTLIER_PX
    shifts[outliers] = smoothed[outliers]
    return TorsoSway(shifts, top, int(failed.sum()), int(outliers.sum()))


def _running_median(values: np.ndarray, width: int) -> np.ndarray:
    """``(N, C)`` -> the median of each row's ``width`` neighbours (edges repeat)."""
    pad = width // 2
    padded = np.pad(values, ((pad, pad), (0, 0)), mode="edge")
    windows = np.stack([padded[i : i + len(values)] for i in range(width)])
    return np.median(windows, axis=0)


def estimate_body(frames: np.ndarray, shifts: np.ndarray, person: np.ndarray, faces: np.ndarray,
                  plate: np.ndarray) -> BodyPlate:
    """The body at zero sway from sampled ``frames (S, H, W, 3) uint8`` with their ``shifts (S, 2)``, the person's
    probability ``person (S, H, W)`` and face points ``faces (S, V, 2)``; ``plate (H, W, 3)``: the clean plate, what
    the body plate holds where it never saw body.

    Body is the person outside the head: below the jaw (:data:`NECK_SPAN`), all but the face; above it, all but the
    head's reach (:func:`.clean_plate.head_mask`, hair and ears), which the mesh and the U-Net draw. The neck is
    kept: the U-Net lays the mesh's neck over it where it moves with the head. Long hair over the shoulders would
    count as body here: it sways with the torso, and the U-Net has to correct it.
    """
    body = np.stack([(p > BODY_PROBABILITY) & ~_head(f, p.shape[1], p.shape[0])
                     for p, f in zip(person, faces, strict=True)])
    stable = np.stack([translate(f, -s) for f, s in zip(frames, shifts, strict=True)])
    stable_body = np.stack([translate(b.astype(np.float32), -s, cv2.BORDER_CONSTANT)
                            for b, s in zip(body, shifts, strict=True)]) > 0.5
    share = stable_body.mean(axis=0)
    data = np.ma.masked_array(stable, mask=np.broadcast_to(~stable_body[..., None], stable.shape))
    median = np.ma.median(data, axis=0)
    body_plate = np.where(np.ma.getmaskarray(median), plate, np.ma.filled(median, 0)).round().astype(np.uint8)
    # body where most frames showed body; a soft edge so the layer does not cut a hard line
    mask = cv2.GaussianBlur((share >= 0.5).astype(np.float32), (0, 0), FEATHER_PX)
    return BodyPlate(body_plate, (mask * 255).round().astype(np.uint8), len(frames))


def _head(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(H, W) bool``: the head as the body plate leaves it out (see :func:`estimate_body`)."""
    finite = points[np.isfinite(points).all(1)]
    if len(finite) < 3:
        return np.ones((height, width), bool)  # no face: nothing is known to be body
    reach = finite[:, 1].max() - NECK_SPAN * np.ptp(finite[:, 1])
    above = np.arange(height)[:, None] <= reach
    return (head_mask(finite, width, height, neck=False) & above) | face_mask(finite, width, height)


def plate_gain(frames: np.ndarray, shifts: np.ndarray, faces: np.ndarray, body: BodyPlate, plate: np.ndarray
               ) -> float:
    """How much of the clean plate's error over the body the body plate removes in sampled ``frames (S, H, W, 3)``
    at their ``shifts``: ``1 - error(body plate) / error(clean plate)`` (mean absolute, where the moved mask says
    body, outside the face). Near 0 or below: the body plate explains the frames no better than the clean plate."""
    mask = body.mask.astype(np.float32) / 255
    with_body, without = 0.0, 0.0
    for frame, shift, face in zip(frames, shifts, faces, strict=True):
        weight = translate(mask, shift, cv2.BORDER_CONSTANT) * ~_head(face, *mask.shape[::-1])
        laid = translate(body.plate, shift).astype(np.float32)
        with_body += float((np.abs(laid - frame).mean(-1) * weight).sum())
        without += float((np.abs(plate.astype(np.float32) - frame).mean(-1) * weight).sum())
    return 1.0 - with_body / without if without > 0 else 0.0


def fit_sway_from_pose(poses: np.ndarray, shifts: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """``(7, 2)`` float32 ``W`` with ``[pose, 1] @ W`` the sway a head pose ``(6,)`` goes with (ridge regression
    over the frames given, on standardised poses, then folded back): for animation, where there is a head pose but
    no torso to track. The penalty is ``ridge`` of each pose dimension's energy."""
    mean, scale = poses.mean(0), poses.std(0) + 1e-8
    x = (poses - mean) / scale
    gram = x.T @ x
    weights = np.linalg.solve(gram + ridge * np.diag(np.diag(gram)) + 1e-9 * np.eye(6), x.T @ (shifts - shifts.mean(0)))
    linear = weights / scale[:, None]
    intercept = shifts.mean(0) - mean @ linear
    return np.concatenate([linear, intercept[None]]).astype(np.float32)


def body_plates(cache: CaptureCache, names: Sequence[str], records: Sequence[CameraRecord], mesh: Mesh,
                fit: FitResult, training: Sequence[np.ndarray], stage: str, chunk: int = 256) -> dict[str, Any]:
    """``prepare``'s step: write each camera's body plate, its torso sway per frame and the sway's map from the head
    pose; returns what was done per camera. ``training[k]``: the training frames in which camera ``k`` saw the
    face. A camera whose frame the face fills, whose torso could not be matched, or whose body plate explains its
    frames no better than the clean plate, gets none: its clean plate stays the only plate."""
    report: dict[str, Any] = {}
    for k, (name, record) in enumerate(zip(names, records, strict=True)):
        faces = _projected_faces(mesh, Cameras.from_dict(record), fit, chunk)
        faces[~np.isfinite(fit.rms[:, k])] = np.nan  # this camera did not see the face: nothing to mask out
        train = training[k]
        found = _camera_body(cache, name, faces, train, chunk)
        if isinstance(found, str):
            report[name] = {"body_plate": False, "why": found}
            log.info("camera %s: no body plate (%s); the clean plate is the only plate", name, found)
            continue
        body, sway, gain = found
        from_pose = fit_sway_from_pose(fit.pose[train], sway.shifts[train])
        for array, data, per_frame in ((body_plate_array(name), body.plate, False),
                                       (body_mask_array(name), body.mask, False),
                                       (torso_sway_array(name), sway.shifts, True),
                                       (sway_from_pose_array(name), from_pose, False)):
            cache.write_array(array, data, stage=stage, per_frame=per_frame)
        predicted = np.concatenate([fit.pose[train], np.ones((len(train), 1))], axis=1) @ from_pose
        report[name] = {"body_plate": True, "error_removed": round(gain, 3), "band_top": sway.band_top,
                        "frames_not_matched": sway.failed, "outliers_replaced": sway.replaced,
                        "frames_in_plate": body.frames_used, "coverage": round(body.coverage, 4),
                        "sway_std_px": [round(float(v), 2) for v in sway.shifts[train].std(0)],
                        "sway_from_pose_residual_px": [round(float(v), 2)
                                                       for v in (predicted - sway.shifts[train]).std(0)]}
    return report


def _projected_faces(mesh: Mesh, camera: Cameras, fit: FitResult, chunk: int) -> np.ndarray:
    """``(N, 468, 2)`` the tracked face's mesh points in ``camera``'s pixels, every frame."""
    n = len(fit.pose)
    faces = np.empty((n, FACE_POINTS, 2), np.float32)
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        with torch.no_grad():
            verts = mesh.deform(torch.from_numpy(fit.blend_weights[part]), torch.from_numpy(fit.pose[part]))
            faces[part] = camera.project_to_pixels(verts[:, :FACE_POINTS].float())[0].numpy()
    return faces


def _camera_body(cache: CaptureCache, name: str, faces: np.ndarray, train: np.ndarray, chunk: int
                 ) -> tuple[BodyPlate, TorsoSway, float] | str:
    """Camera ``name``'s body plate, torso sway and the share of the clean plate's error it removes on training
    frames it was not built from; or why there is none."""
    frames, n = cache.array(frames_array(name)), len(faces)
    rows = evenly(train, PLATE_SAMPLE)
    if not len(rows):
        return "no training frame shows the face"
    sample = np.asarray(frames[rows])
    person = segment(list(sample))
    sway = track_torso(frames, faces, train, body_region(person, faces[rows]), chunk)
    if sway is None:
        return "no torso below the face to track in this camera's frames"
    if sway.failed > MAX_FAILED * n:
        return f"the torso could not be matched in {sway.failed} of {n} frames"
    clean = cache.read(clean_plate_array(name))
    body = estimate_body(sample, sway.shifts[rows], person, faces[rows], clean)
    check = evenly(np.setdiff1d(train, rows), PLATE_SAMPLE) if len(train) > len(rows) else rows
    gain = plate_gain(np.asarray(frames[check]), sway.shifts[check], faces[check], body, clean)
    if gain < MIN_GAIN:
        return (f"the body plate explains the torso of frames it was not built from no better than the clean "
                f"plate (it removes {100 * gain:.0f} % of the error; {100 * MIN_GAIN:.0f} % needed)")
    return body, sway, gain
