"""Identity distance: how far the avatar's face is from the person's own, in a face-recognition embedding.

The embedding is dlib's 128-d face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``; davisking's
dlib-models release it into the public domain), with dlib's own HOG face detector and its 5-point landmark model
(``shape_predictor_5_face_landmarks.dat``, CC0) to align each face. The code is the ``dlib-bin`` wheel (dlib is
Boost-licensed); the model files come from the ``face_recognition_models`` package (MIT, its files CC0), installed
by ``tasks.py`` from ``requirements-models.txt``. dlib's 68-point model, whose training data limits commercial use,
is not used. Nothing is downloaded at run time.

Scale: dlib calls two faces the same person below 0.6. On the shared anchor his own frames lie 0.23 from each other
(mean over pairs), other people's portraits 0.78-0.93 from him. :func:`identity_scores` gives the avatar's distance
to the real frame it stands for, and the real frames' own spread as the floor to compare it with.

``face_recognition_models``' ``__init__`` imports ``pkg_resources``, which recent setuptools no longer ship: its
folder is found with ``importlib`` and never imported.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatar_lightning.errors import CacheError

MODEL_PACKAGE = "face_recognition_models"
RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
SAME_PERSON = 0.6  # dlib's threshold: below it, two faces are taken for one person
INSTALL_HINT = ("install them with `python3.11 tasks.py setup` (dlib-bin from pyproject.toml, face_recognition_models "
                "from requirements-models.txt)")


class IdentityUnavailable(CacheError):
    """dlib or its model files are not installed: identity distances cannot be measured here."""


def models_folder() -> Path:
    """The folder holding the ``.dat`` files of ``face_recognition_models`` (found without importing it)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise IdentityUnavailable(f"the {MODEL_PACKAGE} package (dlib's model files) is not installed; {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class FaceEmbedder:
    """RGB image ``(H, W, 3) uint8`` -> dlib's 128-d descriptor of its largest face, or None where it finds none."""

    def __init__(self, models: Path | None = None, upsample: int = 1) -> None:
        try:
            import dlib
        except ImportError:
            raise IdentityUnavailable(f"dlib is not installed; {INSTALL_HINT}") from None
        models = models or models_folder()
        missing = [str(models / name) for name in (RECOGNITION_FILE, LANDMARKS_FILE) if not (models / name).is_file()]
        if missing:
            raise IdentityUnavailable(f"dlib's model file(s) {', '.join(missing)} are missing; {INSTALL_HINT}")
        self.upsample = upsample
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(str(models / LANDMARKS_FILE))
        self.network = dlib.face_recognition_model_v1(str(models / RECOGNITION_FILE))

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        image = np.ascontiguousarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.dtype}{list(image.shape)}")
        faces = self.detector(image, self.upsample)
        if not faces:
            return None
        face = max(faces, key=lambda rect: rect.area())
        return np.asarray(self.network.compute_face_descriptor(image, self.landmarks(image, face)), np.float64)

    def embed(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """``(N, 128)`` descriptors of ``images``, NaN rows where no face was found."""
        out = np.full((len(images), 128), np.nan)
        for i, image in enumerate(images):
            found = self(np.asarray(image))
            if found is not None:
                out[i] = found
        return out


def load_embedder() -> FaceEmbedder | None:
    """A :class:`FaceEmbedder`, or None with one warning saying what to install (scores then show n/a)."""
    try:
        return FaceEmbedder()
    except IdentityUnavailable as error:
        warnings.warn(f"no identity distance: {error}", stacklevel=2)
        return None


@dataclass(frozen=True)
class IdentityScore:
    """How far the avatar's frames are from the real frames they stand for, beside the real frames' own spread.

    Attributes:
        distance: mean over frames where both show a face of |e(avatar_t) - e(real_t)| (lower is better).
        real_spread: mean over pairs of different real frames of |e(real_s) - e(real_t)|: the person's own
            variation over the same frames, the floor a perfect avatar would reach.
        frames_scored: frames with a face found in both.
        frames: frames compared.
    """

    distance: float | None
    real_spread: float | None
    frames_scored: int
    frames: int

    def to_json(self) -> dict[str, Any]:
        return {"distance": self.distance, "real_spread": self.real_spread, "frames_scored": self.frames_scored,
                "frames": self.frames, "same_person_below": SAME_PERSON}


def identity_scores(real: np.ndarray, avatar: np.ndarray) -> IdentityScore:
    """:class:`IdentityScore` of descriptors ``real (N, 128)`` and ``avatar (N, 128)`` (NaN rows: no face)."""
    real, avatar = np.asarray(real, np.float64), np.asarray(avatar, np.float64)
    if real.shape != avatar.shape or real.ndim != 2:
        raise ValueError(f"descriptors must be two (N, D) arrays of one shape, got {real.shape} and {avatar.shape}")
    both = np.isfinite(real).all(1) & np.isfinite(avatar).all(1)
    distance = float(np.linalg.norm(real[both] - avatar[both], axis=1).mean()) if both.any() else None
    seen = real[np.isfinite(real).all(1)]
    spread = None
    if len(seen) >= 2:
        gaps = np.linalg.norm(seen[:, None] - seen[None], axis=-1)
        spread = float(gaps[np.triu_indices(len(seen), 1)].mean())
    return IdentityScore(distance, spread, int(both.sum()), len(real))
