"""Real footage -> capture cache (paper §4): frames, cameras, the actor's template, pose, blend weights, textures.

Steps, each its own module: decode the cameras in lock-step (:mod:`.sources`); FaceMesh landmarks per camera
and frame (faceless frames flagged and counted, never fatal unless a camera never sees a face); the actor's
template (:mod:`.template`); cameras loaded (:mod:`.calibration`) or estimated (:mod:`.bundle_adjustment`); pose
and blend weights fitted to every camera's landmarks (:mod:`.tracking`, :mod:`.fitting`), then again with the
actor's own shapes (:mod:`.personal_shapes`); the head shell (:mod:`.head_shell`); UV textures blended
over cameras (:mod:`.textures`); clean plates (:mod:`.clean_plate`); a time split (:mod:`.split`). Frames,
landmarks and textures stream through ``array_writer``, so memory is flat in the capture's length.

The cache is built in a hidden folder beside ``out`` and renamed into place only when complete: a failure or an
interrupt leaves ``out`` as it was.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from avatar_lightning import __version__
from avatar_lightning.cache.files import check_output_folder, staged_folder
from avatar_lightning.cache.layout import (
    BLEND_WEIGHTS,
    FACE_SEEN,
    POSE,
    TEXTURES,
    clean_plate_array,
    frames_array,
    landmark_array,
    landmark_valid_array,
)
from avatar_lightning.cache.manifest import CameraRecord
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.cache.template import load_template, mesh_from_arrays, write_template
from avatar_lightning.capture import calibration as calib
from avatar_lightning.capture.body_plate import body_plates
from avatar_lightning.capture.bundle_adjustment import estimate_calibration
from avatar_lightning.capture.clean_plate import estimate_plate, head_mask, load_plate
from avatar_lightning.capture.fitting import FitResult, FitSettings
from avatar_lightning.capture.head_shell import ShelledTemplate, add_head_shell, fit_extents
from avatar_lightning.capture.personal_shapes import personal_shapes, with_personal_shapes
from avatar_lightning.capture.sources import CameraSource, CaptureInfo, Undistorter, iter_capture, probe_capture
from avatar_lightning.capture.split import time_split
from avatar_lightning.capture.template import ActorTemplate, build_actor_template
from avatar_lightning.capture.textures import RunningTexture, fuse_cameras, mean_texture, to_uint8
from avatar_lightning.capture.tracking import (
    FOCAL_CANDIDATES,
    TEMPLATE_SAMPLE,
    LandmarkStore,
    choose_focal,
    evenly,
    fit_tracking,
    template_camera,
    triangulate_template,
)
from avatar_lightning.errors import CacheError
from avatar_lightning.features.mediapipe_landmarks import NUM_LANDMARKS, FaceMeshTracker
from avatar_lightning.render import Cameras, Mesh, RasterSettings, get_rasterizer, uv_to_clip
from avatar_lightning.render.cameras import approximate_intrinsics
from avatar_lightning.synth.blendshapes import BLEND_SHAPE_NAMES

STAGE = "prepare"
log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]

CALIBRATION_SAMPLE = 40
TEXTURE_MEAN_SAMPLE = 32
FACE_TEXTURE_SHARE = 0.67  # of the UV layout's height the face (forehead to chin) spans
MESH_LANDMARKS = 468  # FaceMesh's mesh points; the 10 iris points have no template vertex
PLATE_SAMPLE = 48
SHELL_SAMPLE = 48  # frames whose person silhouette fits the head shell
PERSONAL_SAMPLE = 600  # training frames whose landmarks make the personal shapes


def camera_names(count: int) -> list[str]:
    return [f"cam{i}" for i in range(count)]


@dataclass(frozen=True)
class PrepareOptions:
    """What the user chose; see ``python -m avatar_lightning prepare --help``."""

    calibration: str | None = None
    clean_plates: tuple[str, ...] = ()
    test_seconds: float | None = None
    val_seconds: float | None = None
    texture_size: int = 128
    max_side: int | None = 1024  # frames with a longer side are scaled down (None or 0: keep the files' size)
    chunk: int = 32
    overwrite: bool = False
    fit: FitSettings = FitSettings()
    head_shell: bool = True  # hair, skull and ears beyond the face oval, fitted to the person's silhouette
    personal_shapes: int = 12  # pairs of the actor's own blend shapes after the 17 semantic ones (0: none)


# ---------------------------------------------------------------------------------------------- steps
def decode_and_track(info: CaptureInfo, cache: CaptureCache, names: Sequence[str],
                     undistort: Sequence[Undistorter | None], progress: Progress) -> np.ndarray:
    """Write every camera's frames and FaceMesh landmarks into ``cache``; returns ``seen (N, C)``."""
    n, c = info.num_frames, len(names)
    trackers = [FaceMeshTracker(static=False) for _ in names]
    seen = np.zeros((n, c), bool)
    with contextlib.ExitStack() as stack:
        frames = [stack.enter_context(cache.array_writer(
            frames_array(name), (n, h, w, 3), np.uint8, stage=STAGE, per_frame=True))
            for name, (w, h) in zip(names, info.sizes, strict=True)]
        marks = [stack.enter_context(cache.array_writer(
            landmark_array(name), (n, NUM_LANDMARKS, 3), np.float32, stage=STAGE, per_frame=True)) for name in names]
        i = -1
        for i, views in enumerate(iter_capture(info, undistort)):
            for k, image in enumerate(views):
                frames[k][i] = image
                found = trackers[k](image)
                if found is not None:
                    marks[k][i] = found
                    seen[i, k] = True
                else:
                    marks[k][i] = np.nan
            if i % 16 == 0 or i == n - 1:
                progress("decode + FaceMesh", i + 1, n)
        if i + 1 != n:
            raise CacheError(f"decoding gave {i + 1} frames, {n} were counted; did a video change meanwhile?")
    for tracker in trackers:
        tracker.close()
    for k, name in enumerate(names):
        cache.write_array(landmark_valid_array(name), seen[:, k], stage=STAGE, per_frame=True)
    return seen


def check_faces(seen: np.ndarray, sources: Sequence[CameraSource]) -> None:
    """A camera that never sees a face cannot be tracked or textured: refuse, naming it."""
    for k, source in enumerate(sources):
        if not seen[:, k].any():
            raise CacheError(f"camera {source.spec!r}: MediaPipe FaceMesh found no face in any of its "
                             f"{len(seen)} frames; is the actor in view (and the region right)?")


def camera_list(records: Sequence[CameraRecord]) -> list[Cameras]:
    return [Cameras.from_dict(r) for r in records]


def _images(cache: CaptureCache, names: Sequence[str], rows: np.ndarray | slice,
            sizes: Sequence[tuple[int, int]] | None = None) -> list[torch.Tensor]:
    """Frames as float tensors in [0, 1], area-resized to ``sizes[c] = (width, height)`` where given."""
    out = []
    for k, name in enumerate(names):
        frames = np.asarray(cache.array(frames_array(name))[rows])
        if sizes is not None and sizes[k] != (frames.shape[2], frames.shape[1]):
            frames = np.stack([cv2.resize(f, sizes[k], interpolation=cv2.INTER_AREA) for f in frames])
        out.append(torch.from_numpy(frames.astype(np.float32) / 255))
    return out


def texture_cameras(records: Sequence[CameraRecord], fit: FitResult, size: int) -> list[Cameras]:
    """Each camera at the resolution texture extraction needs: about two pixels per texel across the face.

    The face spans about :data:`FACE_TEXTURE_SHARE` of the texture's height; a larger image only costs time
    (the rasteriser's z-buffer is at the image's size), so it is area-averaged down to that.
    """
    out = []
    for k, record in enumerate(records):
        face = float(np.nanmedian(fit.face_height[:, k])) if np.isfinite(fit.face_height[:, k]).any() else 0.0
        scale = min(1.0, 2 * FACE_TEXTURE_SHARE * size / face) if face > 0 else 1.0
        camera = Cameras.from_dict(record)
        width, height = max(8, round(record.width * scale)), max(8, round(record.height * scale))
        out.append(camera if scale == 1.0 else camera.resized(width, height))
    return out


def extract_textures(cache: CaptureCache, names: Sequence[str], records: Sequence[CameraRecord], mesh: Mesh,
                     fit: FitResult, size: int, chunk: int, progress: Progress) -> float:
    """Write ``tracking/textures (N, T, T, 3) uint8``; returns the share of texels never seen by any camera."""
    n = len(fit.pose)
    settings = RasterSettings(near=0.05, far=50.0)
    cams = texture_cameras(records, fit, size)
    sizes = [c.image_size for c in cams]
    pose, blend = torch.from_numpy(fit.pose), torch.from_numpy(fit.blend_weights)
    sample = evenly(np.arange(n), TEXTURE_MEAN_SAMPLE)
    with torch.no_grad():
        verts = mesh.deform(blend[sample], pose[sample])
        colour, weight = fuse_cameras(mesh, verts, _images(cache, names, sample, sizes), cams, size, settings)
        running = RunningTexture(mean_texture(colour, weight))
        with cache.array_writer(TEXTURES, (n, size, size, 3), np.uint8, stage=STAGE,
                                per_frame=True) as textures:
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                verts = mesh.deform(blend[start:stop], pose[start:stop])
                images = _images(cache, names, slice(start, stop), sizes)
                colour, weight = fuse_cameras(mesh, verts, images, cams, size, settings)
                textures[start:stop] = to_uint8(running.update(colour, weight))
                progress("UV textures", stop, n)
    covered = _uv_coverage(mesh, size)
    return float((covered & ~running.seen).sum() / max(covered.sum(), 1))


def _uv_coverage(mesh: Mesh, size: int) -> torch.Tensor:
    rasterizer = get_rasterizer("torch", torch.device("cpu"))
    raster = rasterizer.rasterize(uv_to_clip(mesh.uvs), mesh.uv_faces, (size, size))
    return raster.triangle_id[0] >= 0


def clean_plates(cache: CaptureCache, names: Sequence[str], records: Sequence[CameraRecord], mesh: Mesh,
                 fit: FitResult, given: Sequence[str]) -> dict[str, Any]:
    """Write ``cameras/<name>/clean_plate`` for every camera; returns what was done per camera."""
    if given and len(given) != len(names):
        raise CacheError(f"--clean-plate was given {len(given)} times for {len(names)} cameras; give one per "
                         "camera, in the order of --video, or none")
    report: dict[str, Any] = {}
    n = len(fit.pose)
    for k, (name, record) in enumerate(zip(names, records, strict=True)):
        if given:
            plate = load_plate(given[k], record.width, record.height)
            report[name] = {"source": str(Path(given[k]).resolve())}
        else:
            rows = evenly(np.arange(n), PLATE_SAMPLE)
            with torch.no_grad():
                verts = mesh.deform(torch.from_numpy(fit.blend_weights[rows]), torch.from_numpy(fit.pose[rows]))
                pixels, _ = Cameras.from_dict(record).project_to_pixels(verts[:, :MESH_LANDMARKS].float())
            masks = np.stack([head_mask(p, record.width, record.height) for p in pixels.numpy()])
            heads = np.stack([head_mask(p, record.width, record.height, neck=False) for p in pixels.numpy()])
            estimate = estimate_plate(np.asarray(cache.array(frames_array(name))[rows]), masks, heads)
            plate = estimate.plate
            report[name] = {"source": "temporal median of sampled frames with the head masked out",
                            "frames": estimate.frames_used, "never_seen_fraction": round(estimate.unseen_fraction, 4),
                            "still_below_the_face_fraction": round(estimate.static_fraction, 4)}
            if estimate.unseen_fraction > 0:
                log.warning("camera %s: %.1f %% of the clean plate was never seen behind the head and is inpainted; "
                            "pass --clean-plate with a frame of the empty scene for a better one", name,
                            100 * estimate.unseen_fraction)
        cache.write_array(clean_plate_array(name), plate, stage=STAGE)
    return report


def training_rows(cache: CaptureCache, fit: FitResult, camera: int) -> np.ndarray:
    """Training frames in which camera number ``camera`` saw the face."""
    train = cache.rows_in("train")
    return np.intersect1d(np.flatnonzero(np.isfinite(fit.rms[:, camera])), train)


def personal_rig(cache: CaptureCache, store: LandmarkStore, seen: np.ndarray, records: Sequence[CameraRecord],
                 camera: int, template: ActorTemplate, fit: FitResult, options: PrepareOptions, progress: Progress
                 ) -> tuple[ActorTemplate, FitResult, dict[str, Any] | None]:
    """The actor's own shapes from camera ``camera``'s landmarks on training frames and the semantic fit, then
    every frame fitted again with them (:mod:`.personal_shapes`); unchanged where too few frames saw the face."""
    rows = evenly(training_rows(cache, fit, camera), PERSONAL_SAMPLE)
    shapes = personal_shapes(template, np.asarray(store.arrays[camera][rows], np.float64), fit.blend_weights[rows],
                             options.personal_shapes)
    if shapes is None:
        log.warning("only %d training frames show the face: no personal blend shapes, the 17 shared ones alone",
                    len(rows))
        return template, fit, None
    template = with_personal_shapes(template, shapes)
    fit = fit_tracking(store, seen, records, template, options.fit.for_personal_shapes(), progress)
    return template, fit, shapes.report()


def head_shell(cache: CaptureCache, camera: int, template: ActorTemplate, fit: FitResult
               ) -> tuple[ShelledTemplate, dict[str, Any]]:
    """The template with a head shell fitted to the person's silhouette in camera number ``camera`` (the
    template's), over a sample of the training frames in which it saw the face; and what to record of it."""
    record, name = cache.cameras[camera], cache.cameras[camera].name
    rows = evenly(training_rows(cache, fit, camera), SHELL_SAMPLE)
    if not len(rows):
        rows = evenly(np.flatnonzero(np.isfinite(fit.rms[:, camera])), SHELL_SAMPLE)
    mesh = mesh_from_arrays({"vertices": template.template.vertices, "triangles": template.template.triangles,
                             "uvs": template.template.uvs, "uv_triangles": template.template.uv_triangles,
                             "blend_basis": template.blend_basis})
    extents = fit_extents(np.asarray(cache.array(frames_array(name))[rows]), mesh, Cameras.from_dict(record),
                          fit.pose[rows], fit.blend_weights[rows])
    shelled = add_head_shell(template.template, template.blend_basis, extents)
    if shelled.extents.max() < 1.05:
        log.warning("camera %s: the person's silhouette hardly reaches beyond the face oval in %d sampled frames "
                    "(selfie segmentation); the head shell hugs the face and the re-render U-Net paints the hair",
                    name, len(rows))
    return shelled, {"camera": name, "frames": len(rows), "vertices": len(shelled.shell),
                     "extents": [round(float(e), 3) for e in shelled.extents]}


def warn_unseen_faces(seen: np.ndarray, fps: float) -> None:
    """Say how many frames show no face to any camera, and where the longest gap is: their pose, blend weights and
    textures are interpolated guesses, which the head VAE and the re-render U-Net then never train on."""
    missing = int((~seen).sum())
    if not missing:
        return
    gaps = _runs(~seen)
    first, last = max(gaps, key=lambda run: run[1] - run[0])
    log.warning("no face in %d of %d frames (%.0f %%; the longest gap: frames %d-%d, %.1f s): their tracking and "
                "textures are interpolated, so the head VAE and the re-render U-Net leave them out "
                "(tracking/face_seen)", missing, len(seen), 100 * missing / len(seen), first, last - 1,
                (last - first) / fps)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of every run of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def fit_report(fit: FitResult, names: Sequence[str]) -> dict[str, Any]:
    """Reprojection error per camera (median px and share of the face height) and frame counts."""
    per_camera = {}
    for k, name in enumerate(names):
        ok = np.isfinite(fit.rms[:, k])
        relative = fit.rms[ok, k] / fit.face_height[ok, k]
        per_camera[name] = {
            "frames_with_face": int(ok.sum()),
            "median_reprojection_px": float(np.median(fit.rms[ok, k])) if ok.any() else None,
            "median_reprojection_of_face_height": float(np.median(relative)) if ok.any() else None,
            "p95_reprojection_of_face_height": float(np.percentile(relative, 95)) if ok.any() else None,
        }
    return {"cameras": per_camera, "frames": int(len(fit.fitted)), "frames_fitted": int(fit.fitted.sum()),
            "frames_interpolated": int((~fit.fitted).sum())}


# ---------------------------------------------------------------------------------------------- the stage
def prepare_capture(videos: Sequence[str], out: str | Path, options: PrepareOptions | None = None,
                    progress: Progress | None = None) -> CaptureCache:
    """Turn the synchronised cameras ``videos`` (``PATH`` or ``PATH@x,y,w,h``) into a capture cache at ``out``."""
    options = options or PrepareOptions()
    report = progress or (lambda what, done, total: None)
    out = Path(out)
    started = time.perf_counter()
    sources = [CameraSource.parse(v) for v in videos]
    if options.texture_size < 16:
        raise CacheError(f"--texture-size must be at least 16, got {options.texture_size}")
    if options.personal_shapes < 0:
        raise CacheError(f"--personal-shapes must be 0 (the shared shapes alone) or more, "
                         f"got {options.personal_shapes}")
    check_output_folder(out, options.overwrite)
    info = probe_capture(sources, options.max_side)
    sequences = time_split(info.num_frames, info.fps, options.test_seconds, options.val_seconds)
    names = camera_names(len(sources))
    loaded = (calib.load_calibration(options.calibration, names, info.original_sizes) if options.calibration
              else None)
    undistort = [None] * len(names)
    if loaded is not None:
        undistort = [Undistorter(np.array(r.K), d, (r.width, r.height)) if d is not None else None
                     for r, d in zip(loaded.cameras, loaded.distortion, strict=True)]
        if info.source_sizes:  # the file's cameras, for the frames as scaled down
            loaded = calib.Calibration([calib.scaled_camera(r, size) for r, size in zip(loaded.cameras, info.sizes,
                                                                                         strict=True)],
                                       loaded.distortion, loaded.estimated, loaded.report)
    provisional = loaded.cameras if loaded else [
        CameraRecord(name, approximate_intrinsics(w, h), np.eye(3).tolist(), [0.0, 0.0, 0.0], w, h)
        for name, (w, h) in zip(names, info.sizes, strict=True)]
    with staged_folder(out, STAGE) as staging:
        cache = CaptureCache.create(
            staging, fps=info.fps, num_frames=info.num_frames, sequences=sequences, cameras=provisional,
            meta={"generator": "avatar_lightning.capture", "version": __version__, "complete": False,
                  "sources": [s.spec for s in sources], "blend_shapes": list(BLEND_SHAPE_NAMES)})
        seen = decode_and_track(info, cache, names, undistort, report)
        check_faces(seen, sources)

        store = LandmarkStore([cache.array(landmark_array(name)) for name in names])
        k = template_camera(store, seen)
        rows = evenly(np.flatnonzero(seen[:, k]), TEMPLATE_SAMPLE)
        template = build_actor_template(np.asarray(store.arrays[k][rows], np.float64))
        report("actor template", 1, 1)

        focal_search: dict[str, float] | None = None
        if loaded is not None:
            calibration = loaded
        else:
            calibration = estimate_cameras(store, seen, info, names, template)
            if len(names) == 1:
                record, focal_search = choose_focal(store, seen, calibration.cameras[0], template, options.fit)
                calibration = calib.Calibration([record], calibration.distortion, True,
                                                {**calibration.report, "focal_search": focal_search,
                                                 "intrinsics": "focal length chosen by landmark reprojection error "
                                                               f"among {list(FOCAL_CANDIDATES)} x the longer side"})
            log.warning("no --calibration given: the cameras were estimated (%s); see meta.prepare.calibration",
                        calibration.report.get("method", "default intrinsics"))
        records = calibration.cameras
        cache.set_cameras(records)
        report("cameras", 1, 1)

        if len(names) > 1:
            template = triangulate_template(store, seen, records, template, options.fit)
            report("template from all cameras", 1, 1)
        fit = fit_tracking(store, seen, records, template, options.fit, report)
        personal = None
        if options.personal_shapes > 0:
            template, fit, personal = personal_rig(cache, store, seen, records, k, template, fit, options, report)
            report("personal blend shapes", 1, 1)
        t, basis, shell = template.template, template.blend_basis, None
        if options.head_shell:
            shelled, shell = head_shell(cache, k, template, fit)
            t, basis = shelled.template, shelled.blend_basis
            report("head shell", 1, 1)
        write_template(cache, {"vertices": t.vertices, "triangles": t.triangles, "uvs": t.uvs,
                               "uv_triangles": t.uv_triangles, "blend_basis": basis}, STAGE)
        for name, array in ((POSE, fit.pose), (BLEND_WEIGHTS, fit.blend_weights)):
            cache.write_array(name, array.astype(np.float32), stage=STAGE, per_frame=True)
        cache.write_array(FACE_SEEN, fit.fitted, stage=STAGE, per_frame=True)
        warn_unseen_faces(fit.fitted, info.fps)

        mesh = load_template(cache)
        unseen_texels = extract_textures(cache, names, records, mesh, fit, options.texture_size, options.chunk,
                                         report)
        plates = clean_plates(cache, names, records, mesh, fit, options.clean_plates)
        training = [training_rows(cache, fit, k) for k in range(len(names))]
        bodies = body_plates(cache, names, records, mesh, fit, training, STAGE, options.chunk)
        report("body plates", 1, 1)
        summary = {
            "frames": {"max_side": options.max_side, "sizes": [list(size) for size in info.sizes],
                       "scaled_from": [list(size) for size in info.source_sizes] or None},
            "calibration": {"estimated": calibration.estimated, **calibration.report},
            "template": {"camera": names[k], "frames_in_neutral": template.frames_used},
            "personal_shapes": personal,
            "head_shell": shell,
            "faces": {"frames_without_face": int((~fit.fitted).sum()),  # in every camera: left out of training
                      **{name: {"frames_without_face": int((~seen[:, i]).sum())} for i, name in enumerate(names)}},
            "fit": fit_report(fit, names),
            "textures": {"size": options.texture_size, "never_seen_texel_fraction": round(unseen_texels, 4)},
            "clean_plates": plates,
            "body_plates": bodies,
            "seconds": round(time.perf_counter() - started, 1),
        }
        cache.set_meta(prepare=summary, blend_shapes=list(template.blend_shape_names), complete=True)
        from avatar_lightning.capture.report import write_report

        write_report(cache, staging / "report", mesh, fit, names, records)
    return CaptureCache(out)


def estimate_cameras(store: LandmarkStore, seen: np.ndarray, info: CaptureInfo, names: Sequence[str],
                     template: ActorTemplate) -> calib.Calibration:
    """Cameras by bundle adjustment of FaceMesh landmarks (the first camera is the world frame)."""
    rows = evenly(np.flatnonzero(seen.sum(1) >= min(2, len(names))), 4 * CALIBRATION_SAMPLE)
    mesh_points = template.template.vertices[:MESH_LANDMARKS].astype(np.float64)
    return estimate_calibration(store.read(rows)[:, :, :MESH_LANDMARKS], seen[rows], info.sizes, names,
                                      mesh_points, max_frames=CALIBRATION_SAMPLE)
