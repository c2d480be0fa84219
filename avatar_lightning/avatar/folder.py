"""An avatar folder: everything ``animate`` needs, loadable on a machine without the training cache.

Layout (``avatar.json`` lists every piece; ``python -m avatar_lightning export`` writes it)::

    avatar.json             format version, feature extractor and its settings, fps, cameras, default pose
    head_vae.ckpt           HeadVAE: z -> blend weights, UV texture
    rerender.ckpt           Rerenderer: I_orig -> I_corr, alpha, beta, gamma
    animator.ckpt           Animator: features -> z (its feature normalisation is in the checkpoint's buffers)
    template.npz            the head template: vertices, triangles, uvs, uv_triangles, blend_basis
    clean_plates/<cam>.png  each capture camera's empty background
    body_plates/<cam>.png, body_plates/<cam>_mask.png
                            the body below the head and where it is body, for cameras ``prepare`` made one for
                            (``avatar.json``'s ``body_plates`` holds each one's map from head pose to torso sway)

The folder is built in a hidden sibling and renamed into place (``cache.files.staged_folder``), so a failed
export never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from avatar_lightning.cache.files import staged_folder
from avatar_lightning.cache.layout import POSE, clean_plate_array
from avatar_lightning.cache.manifest import CameraRecord
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.cache.template import mesh_from_arrays, template_arrays
from avatar_lightning.checkpoints import checkpoint_entry, load_model, weights_fingerprint
from avatar_lightning.errors import CacheError
from avatar_lightning.render import Mesh
from avatar_lightning.render.body import BodyLayer, read_body_layer

FORMAT = "avatar_lightning.avatar"
VERSION = 1
MANIFEST = "avatar.json"
CHECKPOINTS = {"head_vae": "head_vae.ckpt", "rerender": "rerender.ckpt", "animator": "animator.ckpt"}
TEMPLATE = "template.npz"
EXPORT_HINT = "write a complete one with `python -m avatar_lightning export`"


def _load_checkpoint(kind: str, path: Path) -> torch.nn.Module:
    from avatar_lightning.models.animator import Animator
    from avatar_lightning.models.head_vae import HeadVAE
    from avatar_lightning.models.rerender import Rerenderer

    classes = {"head_vae": HeadVAE, "rerender": Rerenderer, "animator": Animator}
    return load_model(classes[kind], path)


@dataclass
class Avatar:
    """A loaded avatar: three trained models, the head template, capture cameras and their clean plates (and body
    plates, where the capture had a torso to track)."""

    root: Path
    info: dict[str, Any]
    head_vae: Any
    rerenderer: Any
    animator: Any
    mesh: Mesh
    cameras: list[CameraRecord]
    plates: dict[str, np.ndarray]
    bodies: dict[str, BodyLayer] = field(default_factory=dict)

    @property
    def features(self) -> str:
        """The feature output the animator reads (``features/<name>`` of a driving cache)."""
        return str(self.animator.hparams.features)

    @property
    def extractor(self) -> str:
        return str(self.info["features"]["extractor"])

    @property
    def relative(self) -> str:
        return str(self.info["features"].get("relative", "none"))

    def camera(self, name: str | None) -> CameraRecord:
        if name is None:
            return self.cameras[0]
        for record in self.cameras:
            if record.name == name:
                return record
        raise CacheError(f"{self.root}: no camera {name!r}; the avatar has {[c.name for c in self.cameras]}")

    def to(self, device: torch.device) -> Avatar:
        for model in (self.head_vae, self.rerenderer, self.animator):
            model.to(device)
        self.mesh = self.mesh.to(device)
        return self


def _check_head_vae_encoded_the_latents(cache: CaptureCache, head_vae: torch.nn.Module, head_vae_path: Path,
                                        animator_path: Path) -> None:
    """The head VAE must be the one whose latents the animator learned: another one (even of the same size)
    decodes them to a different face. ``encode`` records the weights' fingerprint for each latents array."""
    data = checkpoint_entry(animator_path, "datamodule_hyper_parameters") or {}
    latents = str(data.get("latents", "head_vae"))
    recorded = cache.manifest.meta.get("latents", {}).get(latents) or {}
    expected = recorded.get("weights_sha256")
    if expected is None:
        return  # latents not written by `encode` (an older cache or a test fixture): nothing to compare against
    if weights_fingerprint(head_vae) != expected:
        raise CacheError(
            f"--head-vae {head_vae_path} is not the head VAE that encoded latents/{latents} in {cache.root} (that was "
            f"{recorded.get('checkpoint')}); the animator learned those latents, so pass that checkpoint, or re-run "
            f"`python -m avatar_lightning encode --ckpt {head_vae_path} --cache {cache.root} --name {latents}` and "
            "retrain the animator")


def export_avatar(cache: CaptureCache, out: str | Path, head_vae: str | Path, rerender: str | Path,
                  animator: str | Path, overwrite: bool = False) -> Path:
    """Write the avatar folder ``out`` from a training cache and the three checkpoints; returns ``out``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise CacheError(f"{out} exists; pass --overwrite to replace it")
    sources = {"head_vae": Path(head_vae), "rerender": Path(rerender), "animator": Path(animator)}
    models = {kind: _load_checkpoint(kind, path) for kind, path in sources.items()}  # refuse foreign files early
    features = models["animator"].hparams.features
    recorded = cache.manifest.meta.get("features", {}).get(features)
    if recorded is None:
        raise CacheError(f"{cache.root}: no record of how features/{features} were extracted; run "
                         f"`python -m avatar_lightning features --cache {cache.root}` first")
    if models["head_vae"].hparams.latent_dim != models["animator"].hparams.latent_dim:
        raise CacheError(f"the animator predicts {models['animator'].hparams.latent_dim}-d latents but the head VAE "
                         f"takes {models['head_vae'].hparams.latent_dim}: they were not trained together")
    _check_head_vae_encoded_the_latents(cache, models["head_vae"], sources["head_vae"], sources["animator"])
    pose = cache.read(POSE)
    train = cache.rows_in("train")
    plates = {record.name: f"clean_plates/{record.name}.png" for record in cache.cameras}
    bodies = {name: body for name in (c.name for c in cache.cameras) if (body := read_body_layer(cache, name))}
    body_files = {name: {"plate": f"body_plates/{name}.png", "mask": f"body_plates/{name}_mask.png",
                         "sway_from_pose": body.from_pose.tolist(), "sway_range": [body.low.tolist(),
                                                                                   body.high.tolist()]}
                  for name, body in bodies.items()}
    info = {
        "format": FORMAT,
        "version": VERSION,
        "source_cache": str(cache.root.resolve()),
        "fps": cache.fps,
        "features": {"output": features, **{k: v for k, v in recorded.items() if k != "frames_without_face_per_span"}},
        "default_pose": np.asarray(pose[train]).mean(axis=0).tolist(),  # the actor's average head pose
        "cameras": [{"name": c.name, "K": c.K, "R": c.R, "t": c.t, "width": c.width, "height": c.height}
                    for c in cache.cameras],
        "files": {**CHECKPOINTS, "template": TEMPLATE, "clean_plates": plates},
        "body_plates": body_files,
    }
    with staged_folder(out, "export") as staging:
        (staging / "clean_plates").mkdir()
        for kind, path in sources.items():
            shutil.copyfile(path, staging / CHECKPOINTS[kind])
        np.savez(staging / TEMPLATE, **template_arrays(cache))
        for record in cache.cameras:
            plate = cache.read(clean_plate_array(record.name))
            cv2.imwrite(str(staging / plates[record.name]), cv2.cvtColor(plate, cv2.COLOR_RGB2BGR))
        if bodies:
            (staging / "body_plates").mkdir()
        for name, entry in body_files.items():
            cv2.imwrite(str(staging / entry["plate"]), cv2.cvtColor(_uint8_image(bodies[name].plate[0]),
                                                                    cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(staging / entry["mask"]), _uint8_image(bodies[name].mask[0])[..., 0])
        (staging / MANIFEST).write_text(json.dumps(info, indent=1))
    return out


def _uint8_image(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` float in [0, 1] -> ``(H, W, C) uint8`` (the cache's uint8 values come back exactly)."""
    return (image * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def _read_bodies(root: Path, manifest: Path, entries: Any) -> dict[str, BodyLayer]:
    """The body plates an ``avatar.json`` lists (none in an avatar exported before they existed)."""
    if not isinstance(entries, dict):
        raise CacheError(f"{manifest}: 'body_plates' must map each camera to its body plate; {EXPORT_HINT}")
    bodies = {}
    for name, entry in entries.items():
        try:
            paths = [root / entry[key] for key in ("plate", "mask")]
            for key in ("plate", "mask"):
                _check_inside(root, entry[key], manifest)
            if missing := [str(p) for p in paths if not p.is_file()]:
                raise CacheError(f"avatar {root} is incomplete: missing {', '.join(missing)}; {EXPORT_HINT}")
            plate = cv2.cvtColor(cv2.imread(str(paths[0]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            mask = cv2.imread(str(paths[1]), cv2.IMREAD_GRAYSCALE)
            bodies[name] = BodyLayer.from_arrays(plate, mask, np.asarray(entry["sway_from_pose"], np.float32),
                                                 np.asarray(entry["sway_range"], np.float32))
        except (KeyError, TypeError, ValueError) as err:
            raise CacheError(f"{manifest}: camera {name!r}'s body plate entry is malformed ({err}); "
                             f"{EXPORT_HINT}") from None
    return bodies


def _check_inside(root: Path, relative: Any, manifest: Path) -> None:
    """A file an avatar.json names must lie in the avatar folder: a shared folder cannot point elsewhere."""
    if not isinstance(relative, str) or not relative:
        raise CacheError(f"{manifest}: file entry {relative!r} is not a relative path; {EXPORT_HINT}")
    inside = root.resolve()
    target = (root / relative).resolve()
    if Path(relative).is_absolute() or (target != inside and inside not in target.parents):
        raise CacheError(f"{manifest}: {relative!r} points outside the avatar folder {root}; refusing to read it")


def load_avatar(root: str | Path) -> Avatar:
    """Load an avatar folder; a missing or foreign piece is a :class:`CacheError` naming it."""
    root = Path(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise CacheError(f"{root} is not an avatar folder: {MANIFEST} is missing; {EXPORT_HINT}")
    try:
        info = json.loads(manifest.read_text())
    except json.JSONDecodeError as err:
        raise CacheError(f"{manifest} is not valid JSON ({err}); {EXPORT_HINT}") from None
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise CacheError(f"{manifest}: not a version-{VERSION} avatar ({info.get('format')!r} "
                         f"v{info.get('version')!r}); {EXPORT_HINT}")
    files = info.get("files", {})
    if not isinstance(files, dict) or not isinstance(files.get("clean_plates", {}), dict):
        raise CacheError(f"{manifest}: 'files' must map each piece to a file in the folder; {EXPORT_HINT}")
    for relative in [*(v for k, v in files.items() if k != "clean_plates"), *files.get("clean_plates", {}).values()]:
        _check_inside(root, relative, manifest)
    missing = [str(root / files.get(kind, name)) for kind, name in {**CHECKPOINTS, "template": TEMPLATE}.items()
               if not (root / files.get(kind, name)).is_file()]
    missing += [str(root / p) for p in files.get("clean_plates", {}).values() if not (root / p).is_file()]
    if missing:
        raise CacheError(f"avatar {root} is incomplete: missing {', '.join(missing)}; {EXPORT_HINT}")
    models = {kind: _load_checkpoint(kind, root / files[kind]) for kind in CHECKPOINTS}
    with np.load(root / files["template"]) as template:
        mesh = mesh_from_arrays({k: template[k] for k in template.files})
    plates = {name: cv2.cvtColor(cv2.imread(str(root / path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
              for name, path in files["clean_plates"].items()}
    cameras = [CameraRecord(**c) for c in info["cameras"]]
    if models["animator"].hparams.features != info["features"]["output"]:
        raise CacheError(f"{manifest}: the animator reads {models['animator'].hparams.features!r} but the avatar "
                         f"lists features {info['features']['output']!r}; {EXPORT_HINT}")
    bodies = _read_bodies(root, manifest, info.get("body_plates", {}))
    return Avatar(root, info, models["head_vae"], models["rerender"], models["animator"], mesh, cameras, plates,
                  bodies)
