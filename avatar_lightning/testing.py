"""Tiny data and untrained models in the real file formats, shared by the tests and the benchmarks.

Like Lightning's ``BoringModel`` and ``RandomDataset``: small procedural caches (:func:`make_tiny_cache`,
:func:`make_expression_cache`), Lightning checkpoints of models that were never fitted
(:func:`save_lightning_checkpoint`) and a random-weight avatar folder (:func:`make_avatar`). They exercise the real
cache, loading and inference code in seconds; they say nothing about quality.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from avatar_lightning.avatar.folder import export_avatar
from avatar_lightning.cache.layout import BLEND_WEIGHTS, TEXTURES, feature_array, latent_array, valid_array
from avatar_lightning.cache.manifest import CameraRecord, SequenceRecord
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.features.run import extract_features
from avatar_lightning.models.animator import Animator
from avatar_lightning.models.head_vae import HeadVAE
from avatar_lightning.models.rerender import Rerenderer

FEATURES = feature_array("toy")
LATENTS = latent_array("toy")


def tiny_sequences() -> list[SequenceRecord]:
    """Three training sequences, one validation and one test sequence: 60 frames in all."""
    return [
        SequenceRecord("train_a", 0, 14, "train"),
        SequenceRecord("train_b", 15, 29, "train"),
        SequenceRecord("train_c", 30, 39, "train"),
        SequenceRecord("val", 40, 49, "val"),
        SequenceRecord("test", 50, 59, "test"),
    ]


def tiny_camera(name: str = "front", width: int = 8, height: int = 6) -> CameraRecord:
    K = [[10.0, 0.0, width / 2], [0.0, 10.0, height / 2], [0.0, 0.0, 1.0]]
    R = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    return CameraRecord(name=name, K=K, R=R, t=[0.0, 0.0, 2.0], width=width, height=height)


def make_tiny_cache(root: Path, seed: int = 0, feature_dim: int = 5, latent_dim: int = 3) -> CaptureCache:
    """A 60-frame cache whose latents are a fixed linear map of the features (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    sequences = tiny_sequences()
    num_frames = sequences[-1].last + 1
    cache = CaptureCache.create(root, fps=25.0, num_frames=num_frames, sequences=sequences,
                                cameras=[tiny_camera()], meta={"generator": "avatar_lightning.testing.make_tiny_cache"})
    x = rng.standard_normal((num_frames, feature_dim)).astype(np.float32)
    mixing = rng.standard_normal((feature_dim, latent_dim)).astype(np.float32)
    cache.write_array(FEATURES, x, stage="test-fixture", per_frame=True)
    cache.write_array(LATENTS, x @ mixing, stage="test-fixture", per_frame=True)
    frames = rng.integers(0, 256, (num_frames, 6, 8, 3), dtype=np.uint8)
    cache.write_array("cameras/front/frames", frames, stage="test-fixture", per_frame=True)
    return cache


def make_expression_cache(root: Path, seed: int = 0, feature_dim: int = 24, expression_dim: int = 5,
                          latent_dim: int = 8, invalid_fraction: float = 0.05,
                          test_sequences: int = 1) -> tuple[CaptureCache, np.ndarray]:
    """A small capture whose features and latents are two views of one hidden expression trajectory.

    Per frame a smooth expression ``e (E,)`` drives person-independent features ``x = tanh(e A) + noise`` and the
    avatar's latents ``z = e B + noise``: the animator's problem with the truth known, learnable in seconds. A few
    frames per sequence have no face (``valid`` False, garbage values). Four 60-frame training sequences, a
    30-frame validation one and 60 test frames in ``test_sequences`` sequences. Returns the cache and ``B``
    (expression -> latent).
    """
    rng = np.random.default_rng(seed)
    sequences = [SequenceRecord(f"train_{i}", 60 * i, 60 * i + 59, "train") for i in range(4)]
    sequences += [SequenceRecord("val", 240, 269, "val")]
    bounds = np.linspace(270, 330, test_sequences + 1).round().astype(int)  # the 60 test frames, split evenly
    sequences += [SequenceRecord("test" if k == 0 else f"test_{k}", int(a), int(b) - 1, "test")
                  for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))]
    num_frames = sequences[-1].last + 1
    steps = rng.standard_normal((num_frames, expression_dim)) * 0.35
    expression = np.zeros_like(steps)
    for seq in sequences:  # a damped random walk per sequence: smooth, mean-reverting expressions
        for t in range(seq.first, seq.last + 1):
            previous = expression[t - 1] if t > seq.first else rng.standard_normal(expression_dim) * 0.5
            expression[t] = 0.85 * previous + steps[t]
    mixing = rng.standard_normal((expression_dim, feature_dim)) / np.sqrt(expression_dim)
    to_latent = rng.standard_normal((expression_dim, latent_dim)) / np.sqrt(expression_dim)
    x = np.tanh(expression @ mixing) + 0.05 * rng.standard_normal((num_frames, feature_dim))
    z = expression @ to_latent + 0.02 * rng.standard_normal((num_frames, latent_dim))
    valid = rng.random(num_frames) >= invalid_fraction
    x[~valid] = rng.standard_normal((int((~valid).sum()), feature_dim)) * 5  # what a failed tracker leaves
    cache = CaptureCache.create(root, fps=25.0, num_frames=num_frames, sequences=sequences, cameras=[tiny_camera()],
                                meta={"generator": "avatar_lightning.testing.make_expression_cache"})
    cache.write_array(feature_array("expression"), x.astype(np.float32), stage="test-fixture", per_frame=True)
    cache.write_array(valid_array("expression"), valid, stage="test-fixture", per_frame=True)
    cache.write_array(latent_array("head_vae"), z.astype(np.float32), stage="test-fixture", per_frame=True)
    return cache, to_latent


def save_lightning_checkpoint(model: pl.LightningModule, path: Path) -> Path:
    """Lightning's checkpoint layout for a model that was never fitted (tests of loading code, not of quality)."""
    cls = type(model)
    hparams = {**dict(model.hparams), "_class_path": f"{cls.__module__}.{cls.__qualname__}"}  # as LightningCLI saves
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": pl.__version__}, path)
    return path


def make_avatar(work: Path, synthetic_root: Path, latent_dim: int = 8) -> Path:
    """Export an avatar of the synthetic actor at ``synthetic_root`` with untrained models into ``work/avatar``;
    ``work`` also gets ``actor`` (a copy of the cache, with MediaPipe features) and the three checkpoints."""
    root = work / "actor"
    shutil.copytree(synthetic_root, root)
    extract_features(root, "mediapipe", relative="sequence", batch_size=32, progress=False)
    cache = CaptureCache(root)
    torch.manual_seed(0)
    texture = cache.record(TEXTURES).shape[1]
    blend = cache.record(BLEND_WEIGHTS).shape[1]
    vae = save_lightning_checkpoint(HeadVAE(texture_size=texture, num_blend_shapes=blend, latent_dim=latent_dim,
                                            width=4, perceptual_weight=0.0, adversarial_weight=0.0),
                                    work / "vae.ckpt")
    rerender = save_lightning_checkpoint(Rerenderer(depth=3, width=8, perceptual_weight=0.0), work / "rerender.ckpt")
    animator = save_lightning_checkpoint(Animator(features="mediapipe", hidden=16, residual_dim=4, feature_dim=1434,
                                                  latent_dim=latent_dim), work / "animator.ckpt")
    return export_avatar(cache, work / "avatar", vae, rerender, animator)
