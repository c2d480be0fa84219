"""The paper's comparison, made quantitative: every animator cell and the baselines scored by one code path.

Each candidate (a trained cell, or a baseline: predict the training mean, nearest neighbour in feature space) is
scored on the actor's cache:

- **validation**: latent MSE. It is the only number a cell is chosen by (:func:`choose`); the test sequence is
  held out from every decision, so its scores stay an honest estimate.
- **test**: latent MSE, blend MSE, jitter ratio (:func:`scoring.score_sequences`), and images of the full chain:
  animator -> head VAE decode -> the template deformed and posed by the capture's tracked pose -> rasterised
  from each capture camera -> re-render U-Net -> composited over the clean plate, against the captured frames:
  PSNR, SSIM (torchmetrics) and LPIPS (where its backbone file is present) over the whole frame and the face box.
  A reference row renders the head VAE's own encoding of each frame: the best any animator can reach with these
  networks.
- **synthetic drivers**: other identities whose true expression is known drive the avatar; the cross-identity
  relative blend error (:func:`scoring.cross_identity_scores`) per driver and per blend shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatar_lightning.cache.layout import feature_array, valid_array
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.checkpoints import load_model
from avatar_lightning.errors import CacheError
from avatar_lightning.scoring import (
    blend_decoder,
    cross_identity_scores,
    mean_baseline,
    nearest_neighbour_baseline,
    score_sequences,
)

BLEND_WEIGHTS = "tracking/blend_weights"
MEAN_LABEL = "baseline: predict the training mean"
REFERENCE_LABEL = "reference: the head VAE's encoding of each frame"
# The cross-identity drivers: one identity per style, together moving every blend shape (see DRIVER_STYLES).
STANDARD_DRIVERS: tuple[tuple[int, str], ...] = (
    (1, "speaking"), (2, "emoting"), (3, "fast"), (4, "subtle"), (5, "asymmetric"))
SELECTION_RULE = ("the cell with the lowest latent MSE on the validation sequence(s); the test sequence is not "
                  "used for choosing")
FACE_MARGIN = 0.1  # the face box: the projected tracked mesh's bounds, widened by 10 % on each side
LPIPS_SIDE = 128  # face boxes are resized to this square for LPIPS (AlexNet needs more than a tiny crop)


@dataclass
class Candidate:
    """A learned cell or a baseline: raw features ``(L, D)`` of one sequence -> latents ``(L, Z)``."""

    label: str
    kind: str  # "run" | "baseline" | "reference"
    features: str  # the feature output it reads ("-": none)
    predict: Callable[[np.ndarray], np.ndarray] | None  # None: the reference (the targets themselves)
    run_dir: Path | None = None
    backbone: str = "-"
    residual: str = "-"


@dataclass
class HeldOut:
    """One split's sequences of one feature variant: features, targets, validity, tracked blend, frame rows."""

    x: list[np.ndarray]
    z: list[np.ndarray]
    valid: list[np.ndarray]
    blend: list[np.ndarray] | None
    rows: list[np.ndarray]


@dataclass
class Scores:
    """Everything measured for one candidate."""

    candidate: Candidate
    metrics: dict[str, float | None] = field(default_factory=dict)
    per_frame: dict[str, list[float | None]] = field(default_factory=dict)
    cross_identity: dict[str, dict[str, Any]] = field(default_factory=dict)  # driver name -> scores


# --------------------------------------------------------------------------------------------- candidates


def _label(run_dir: Path, model: Any) -> str:
    """The label its ``scores.json`` holds (what `compare` shows), else the model's own."""
    scores = run_dir / "scores.json"
    if scores.is_file():
        try:
            return str(json.loads(scores.read_text())["label"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return str(model.label)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders (each holding ``checkpoints/last.ckpt``) named by ``paths`` or found beneath them."""
    runs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise CacheError(f"{path} does not exist (expected an animator run folder or a folder of runs)")
        if (path / "checkpoints" / "last.ckpt").is_file():
            runs.append(path)
        else:
            runs += sorted(p.parent.parent for p in path.rglob("checkpoints/last.ckpt"))
    if not runs:
        raise CacheError(f"no animator run (checkpoints/last.ckpt) in or beneath {', '.join(map(str, paths))}; "
                         "runs are written by `python -m avatar_lightning fit` of an animator experiment")
    return list(dict.fromkeys(r.resolve() for r in runs))


def load_runs(run_dirs: Sequence[Path]) -> list[Candidate]:
    from avatar_lightning.models.animator import Animator

    candidates = []
    for run_dir in run_dirs:
        model = load_model(Animator, run_dir / "checkpoints" / "last.ckpt")

        def predict(x: np.ndarray, model: Any = model) -> np.ndarray:
            return model.predict_sequence(torch.from_numpy(np.array(x, np.float32))).numpy()

        h = model.hparams
        candidates.append(Candidate(_label(run_dir, model), "run", str(h.features), predict, run_dir,
                                    str(h.backbone), "yes" if h.residual_dim > 0 else "no"))
    return candidates


def baselines(cache: CaptureCache, features: Sequence[str], latents: str) -> list[Candidate]:
    """Predict-the-mean (features-free) and nearest neighbour in each feature variant (normalised by the
    training split's statistics, as the animators normalise)."""
    from datamodules.animator import AnimatorDataModule

    out: list[Candidate] = []
    for name in features:
        data = AnimatorDataModule(str(cache.root), features=name, latents=latents)
        train_x, train_z = data.training_frames()
        if not out:
            mean = mean_baseline(train_z, [1])[0][0]
            out.append(Candidate(MEAN_LABEL, "baseline", "-",
                                 lambda x, mean=mean: np.broadcast_to(mean, (len(x), len(mean))).copy()))
        stats = data.statistics()
        scale = (stats["feature_mean"], stats["feature_std"])
        bank = (train_x - scale[0]) / scale[1]

        def nearest(x: np.ndarray, bank: np.ndarray = bank, train_z: np.ndarray = train_z,
                    scale: tuple[np.ndarray, np.ndarray] = scale) -> np.ndarray:
            return nearest_neighbour_baseline(bank, train_z, [(x - scale[0]) / scale[1]])[0]

        out.append(Candidate(f"baseline: nearest neighbour ({name})", "baseline", name, nearest))
    return out


def held_out(cache: CaptureCache, features: str, latents: str, split: str) -> HeldOut:
    """The ``split``'s sequences of one feature variant (frames without a face are marked, not dropped)."""
    from avatar_lightning.cache.layout import latent_array

    sequences = cache.sequences_in(split)
    if not sequences:
        raise CacheError(f"{cache.root}: no {split!r} sequence to score on")
    x_all, valid_all = cache.require_finite(feature_array(features)), cache.array(valid_array(features))
    z_all = cache.array(latent_array(latents))
    blend_all = cache.array(BLEND_WEIGHTS) if cache.has(BLEND_WEIGHTS) else None
    rows = [np.arange(s.first, s.last + 1) for s in sequences]
    return HeldOut(
        x=[np.asarray(x_all[r], np.float32) for r in rows],
        z=[np.asarray(z_all[r], np.float32) for r in rows],
        valid=[np.asarray(valid_all[r], bool) for r in rows],
        blend=None if blend_all is None else [np.asarray(blend_all[r], np.float32) for r in rows],
        rows=rows,
    )


def predictions(candidate: Candidate, data: HeldOut) -> list[np.ndarray]:
    if candidate.predict is None:
        return [z.copy() for z in data.z]
    return [candidate.predict(x) for x in data.x]


# --------------------------------------------------------------------------------------------- images


class ImageScorer:
    """The full chain's frames for chosen held-out rows and cameras, against the captured frames.

    Built once (captured frames, face boxes and tracked poses are read here); :meth:`score` renders one
    candidate's latents for those rows from every camera.
    """

    def __init__(self, cache: CaptureCache, head_vae: Any, rerenderer: Any, rows: np.ndarray,
                 cameras: Sequence[str] | None = None, lpips: Any = None) -> None:
        from avatar_lightning.avatar.folder import Avatar
        from avatar_lightning.avatar.renderer import AvatarRenderer
        from avatar_lightning.cache.template import load_template
        from avatar_lightning.render import Cameras

        names = list(cameras) if cameras else [c.name for c in cache.cameras]
        records = {c.name: c for c in cache.cameras}
        if unknown := [n for n in names if n not in records]:
            raise CacheError(f"{cache.root}: no camera {unknown}; cameras are {list(records)}")
        self.rows, self.lpips = np.asarray(rows), lpips
        mesh = load_template(cache)
        self.poses = torch.from_numpy(np.asarray(cache.array("tracking/pose")[self.rows], np.float32))
        plates = {n: cache.read(f"cameras/{n}/clean_plate") for n in names}
        avatar = Avatar(cache.root, {"default_pose": self.poses.mean(0).tolist()}, head_vae, rerenderer, None, mesh,
                        [records[n] for n in names], plates)
        self.renderers = {n: AvatarRenderer(avatar, n, fps=cache.fps) for n in names}
        with torch.no_grad():
            tracked = mesh.deform(torch.from_numpy(np.asarray(cache.array(BLEND_WEIGHTS)[self.rows], np.float32)),
                                  self.poses)
        self.captured, self.boxes = {}, {}
        for n in names:
            self.captured[n] = torch.from_numpy(np.asarray(cache.array(f"cameras/{n}/frames")[self.rows])).permute(
                0, 3, 1, 2).float() / 255
            pixels, _ = Cameras.from_dict(records[n]).project_to_pixels(tracked)
            self.boxes[n] = _face_boxes(pixels.numpy(), records[n].width, records[n].height)

    @torch.no_grad()
    def score(self, z: np.ndarray, chunk: int = 16) -> dict[str, float | None]:
        """Mean PSNR / SSIM (/ LPIPS) over rows and cameras of latents ``z (len(rows), Z)``."""
        from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

        values: dict[str, list[float]] = {k: [] for k in ("psnr", "ssim", "psnr_face", "ssim_face", "lpips",
                                                          "lpips_face")}
        for name, renderer in self.renderers.items():
            for start in range(0, len(self.rows), chunk):
                part = slice(start, start + chunk)
                image = renderer.render(torch.from_numpy(np.ascontiguousarray(z[part], np.float32)),
                                        list(range(start, start + len(z[part]))), poses=self.poses[part])
                rendered = torch.from_numpy(image).permute(0, 3, 1, 2).float() / 255
                target = self.captured[name][part]
                values["psnr"] += peak_signal_noise_ratio(rendered, target, data_range=1.0, reduction="none",
                                                          dim=(1, 2, 3)).tolist()
                # One SSIM map per frame; the face's SSIM is its mean inside the box (the whole frame's is the mean
                # of all of it), so the box is judged with the same windows as the frame, at one call per chunk.
                ssim, ssim_map = structural_similarity_index_measure(rendered, target, data_range=1.0,
                                                                     reduction="none", return_full_image=True)
                values["ssim"] += ssim.tolist()
                squared_error = (rendered - target) ** 2
                for i, (x0, y0, x1, y1) in enumerate(self.boxes[name][part]):
                    mse = float(squared_error[i, :, y0:y1, x0:x1].mean())
                    values["psnr_face"].append(10 * np.log10(1.0 / mse) if mse > 0 else float("inf"))
                    values["ssim_face"].append(float(ssim_map[i, :, y0:y1, x0:x1].mean()))
                    if self.lpips is not None:
                        values["lpips"].append(float(self.lpips(rendered[i : i + 1], target[i : i + 1])))
                        a, b = (torch.nn.functional.interpolate(image[i : i + 1, :, y0:y1, x0:x1],
                                                                (LPIPS_SIDE, LPIPS_SIDE), mode="bilinear",
                                                                align_corners=False) for image in (rendered, target))
                        values["lpips_face"].append(float(self.lpips(a, b)))
        return {k: (float(np.mean(v)) if v else None) for k, v in values.items()}


def _face_boxes(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(B, V, 2)`` projected vertices -> ``(B, 4)`` int boxes ``x0, y0, x1, y1`` widened by FACE_MARGIN, clipped."""
    low, high = pixels.min(axis=1), pixels.max(axis=1)
    pad = (high - low) * FACE_MARGIN
    low, high = np.floor(low - pad), np.ceil(high + pad)
    x0, y0 = np.clip(low[:, 0], 0, width - 1), np.clip(low[:, 1], 0, height - 1)
    x1 = np.maximum(np.clip(high[:, 0], 0, width), x0 + 1)  # never empty, even for a head out of view
    y1 = np.maximum(np.clip(high[:, 1], 0, height), y0 + 1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(int)


def image_rows(data: HeldOut, count: int) -> np.ndarray:
    """Positions (into the concatenated test sequences) of ``count`` frames spread evenly over them."""
    total = sum(len(r) for r in data.rows)
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))


# --------------------------------------------------------------------------------------------- synthetic drivers


def make_synthetic_drivers(preset: str, work: Path, seed: int = 0) -> list[Path]:
    """The standard cross-identity drivers at ``preset``, made once in ``work/<preset>`` and reused (with the
    features extracted into them) by later calls."""
    from avatar_lightning.synth.generate import generate

    folders = []
    for identity, style in STANDARD_DRIVERS:
        folder = work / preset / f"identity{identity}_{style}"
        generate(folder, preset=preset, identity=identity, seed=seed, style=style, previews=True)
        folders.append(folder)
    return folders


def driver_features(driver: CaptureCache, actor: CaptureCache, output: str) -> tuple[np.ndarray, np.ndarray]:
    """``features/<output>`` of a driver, extracted as the actor's were (same extractor and ``relative``)."""
    from avatar_lightning.features.run import extract_features, options_from_record

    recorded = actor.manifest.meta.get("features", {}).get(output)
    if recorded is None:
        raise CacheError(f"{actor.root}: no record of how features/{output} were made, so a driver's cannot be made "
                         "the same way")
    relative = recorded.get("relative", "none")
    made = driver.manifest.meta.get("features", {}).get(output, {})
    if not driver.has(feature_array(output)) or made.get("relative", "none") != relative:
        extract_features(str(driver.root), recorded["extractor"], options=options_from_record(recorded),
                         relative=relative, progress=False)
        driver = CaptureCache(driver.root)
    return (np.asarray(driver.require_finite(feature_array(output)), np.float32),
            np.asarray(driver.array(valid_array(output)), bool))


def require_truth(driver: CaptureCache) -> None:
    """A cross-identity driver must know its true expression: a synthetic one."""
    if not driver.has("truth/blend_weights"):
        raise CacheError(f"{driver.root} has no truth/blend_weights: a cross-identity driver is a synthetic one "
                         "(`python -m avatar_lightning synth --identity K --style S`)")


def score_cross_identity(candidate: Candidate, drivers: Sequence[CaptureCache], actor: CaptureCache,
                         decode: Callable[[np.ndarray], np.ndarray], names: Sequence[str] = ()) -> dict[str, Any]:
    """``{driver name: scoring.cross_identity_scores}`` of one candidate driven by each synthetic driver."""
    out = {}
    for driver in drivers:
        require_truth(driver)
        truth = np.asarray(driver.read("truth/blend_weights"), np.float32)
        if candidate.features == "-":  # predict-the-mean reads no features: every frame counts
            x, valid = np.zeros((len(truth), 1), np.float32), np.ones(len(truth), bool)
        else:
            x, valid = driver_features(driver, actor, candidate.features)
        out[driver.root.name] = cross_identity_scores(decode(candidate.predict(x)), truth, valid,
                                                      list(names) or None)
    return out


# --------------------------------------------------------------------------------------------- the whole evaluation


@dataclass
class Evaluation:
    """The scores of every candidate, the chosen cell and what was measured on what."""

    scores: list[Scores]
    chosen: Scores
    notes: list[str]
    drivers: list[str]
    blend_shapes: list[str]
    image_frames: int
    cameras: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "chosen": {"label": self.chosen.candidate.label, "run_dir": str(self.chosen.candidate.run_dir),
                       "rule": SELECTION_RULE},
            "notes": self.notes, "drivers": self.drivers, "blend_shapes": self.blend_shapes,
            "image_frames": self.image_frames, "cameras": self.cameras,
            "candidates": [{"label": s.candidate.label, "kind": s.candidate.kind, "features": s.candidate.features,
                            "backbone": s.candidate.backbone, "residual": s.candidate.residual,
                            "run_dir": None if s.candidate.run_dir is None else str(s.candidate.run_dir),
                            "metrics": {k: _json_number(v) for k, v in s.metrics.items()},
                            "per_frame": s.per_frame, "cross_identity": s.cross_identity}
                           for s in self.scores],
        }


COLLAPSED_LATENTS = 0.8  # the reference's blend error above this share of the mean baseline's: latents say little


def _head_vae_check(scores: Sequence[Scores]) -> list[str]:
    """A warning when the head VAE's own encoding of each frame decodes to blend weights barely better than the
    training mean: its latents then carry little expression, and no animator can do better than that."""
    by_label = {s.candidate.label: s.metrics.get("blend_mse") for s in scores}
    reference, mean = by_label.get(REFERENCE_LABEL), by_label.get(MEAN_LABEL)
    if reference is None or mean is None or reference <= COLLAPSED_LATENTS * mean:
        return []
    return [f"the head VAE's latents carry little expression: its own encoding of the test frames decodes to a "
            f"blend MSE of {reference:.3g}, against {mean:.3g} for the training mean, so every cell is bounded by "
            "that; train the head VAE longer (or check its KL weight) before comparing animators"]


def _json_number(value: float | None) -> float | None:
    """Strict JSON has no Infinity (a PSNR of identical frames): null, which the tables show as n/a."""
    return None if value is None or not np.isfinite(value) else float(value)


def choose(scores: Sequence[Scores]) -> Scores:
    """The learned cell chosen by :data:`SELECTION_RULE` (ties: the label, for a stable choice)."""
    runs = [s for s in scores if s.candidate.kind == "run" and s.metrics.get("val_latent_mse") is not None]
    if not runs:
        raise CacheError("no run has a validation score to choose by")
    return min(runs, key=lambda s: (s.metrics["val_latent_mse"], s.candidate.label))


def evaluate(run_dirs: Sequence[Path], cache: CaptureCache, head_vae: Any, rerenderer: Any | None = None,
             latents: str = "head_vae", cameras: Sequence[str] | None = None, image_frames: int = 50,
             drivers: Sequence[Path] = (), lpips: Any = None, log: Callable[[str], None] = print) -> Evaluation:
    """Score every run in ``run_dirs`` and the baselines on ``cache`` (see the module docstring).

    ``rerenderer`` None: no image metrics (said in the notes). ``drivers``: synthetic driver caches (with
    ``truth/blend_weights``) for the cross-identity scores.
    """
    runs = load_runs(run_dirs)
    variants = list(dict.fromkeys(c.features for c in runs))
    candidates = [*runs, *baselines(cache, variants, latents),
                  Candidate(REFERENCE_LABEL, "reference", "-", None)]
    notes: list[str] = []
    decode = blend_decoder(head_vae)
    data = {(f, split): held_out(cache, f if f != "-" else variants[0], latents, split)
            for f in [*variants, "-"] for split in ("val", "test")}
    test_any = data[("-", "test")]
    rows = image_rows(test_any, image_frames)
    scorer = None
    if rerenderer is None:
        notes.append("no image metrics: pass --rerender (the re-render U-Net checkpoint) to render the full chain")
    else:
        scorer = ImageScorer(cache, head_vae, rerenderer, np.concatenate(test_any.rows)[rows], cameras, lpips)
        if lpips is None:
            notes.append("no LPIPS: its AlexNet backbone file is missing; place it as the README's head-model section "
                         "says, or pass --lpips-backbone FILE")
    driver_caches = [CaptureCache(d) for d in drivers]
    names = list(cache.manifest.meta.get("blend_shapes") or [])
    if driver_caches and not names:  # a real actor's cache: the drivers' synthetic rig names the same shapes
        names = list(driver_caches[0].manifest.meta.get("blend_shapes") or [])
    scored: list[Scores] = []
    for candidate in candidates:
        log(f"scoring {candidate.label}")
        result = Scores(candidate)
        val = data[(candidate.features, "val")]
        result.metrics["val_latent_mse"] = score_sequences(predictions(candidate, val), val.z,
                                                           val.valid)["metrics"]["latent_mse"]
        test = data[(candidate.features, "test")]
        predicted = predictions(candidate, test)
        blend_true = test.blend
        latent = score_sequences(predicted, test.z, test.valid,
                                 [decode(p) for p in predicted] if blend_true is not None else None, blend_true)
        result.metrics.update(latent["metrics"])
        result.per_frame.update(latent["per_frame"])
        if scorer is not None:
            result.metrics.update(scorer.score(np.concatenate(predicted)[rows]))
        if candidate.kind != "reference":
            result.cross_identity = score_cross_identity(candidate, driver_caches, cache, decode, names)
        if result.cross_identity:
            relative = [s["metrics"]["relative_error"] for s in result.cross_identity.values()]
            relative = [r for r in relative if r is not None]  # None: a driver that moves no shape
            result.metrics["xid_relative_error"] = float(np.mean(relative)) if relative else None
        scored.append(result)
    notes += _head_vae_check(scored)
    return Evaluation(scored, choose(scored), notes, [d.root.name for d in driver_caches], names, len(rows),
                      list(scorer.renderers) if scorer else [])
