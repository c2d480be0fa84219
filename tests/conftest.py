"""Shared fixtures: tiny generated caches, the location of ../shared, markers for GPU tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avatar_lightning.cache import CaptureCache
from tests.helpers import make_tiny_cache, save_lightning_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
AVATAR_LATENT_DIM = 8


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")


@pytest.fixture
def tiny_cache(tmp_path: Path) -> CaptureCache:
    return make_tiny_cache(tmp_path / "cache")


@pytest.fixture(scope="session")
def synthetic_tiny(tmp_path_factory: pytest.TempPathFactory) -> CaptureCache:
    """The built-in synthetic actor at the tiny preset (seed 0), made once per test session. Read-only."""
    from avatar_lightning.synth.generate import generate

    return generate(tmp_path_factory.mktemp("synthetic") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def avatar_dir(synthetic_tiny: CaptureCache, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported avatar of the tiny synthetic actor with untrained models (loading code, not quality). Read-only;
    ``avatar_dir.parent`` holds ``actor`` (its cache, with MediaPipe features) and the three source checkpoints."""
    import shutil

    from avatar_lightning.avatar import export_avatar
    from avatar_lightning.models.animator import Animator
    from avatar_lightning.models.head_vae import HeadVAE
    from avatar_lightning.models.rerender import Rerenderer
    from avatar_lightning.stages.features import extract_features

    work = tmp_path_factory.mktemp("avatar")
    root = work / "actor"
    shutil.copytree(synthetic_tiny.root, root)
    extract_features(root, "mediapipe", relative="sequence", batch_size=32, progress=False)
    cache = CaptureCache(root)
    torch.manual_seed(0)
    texture = cache.record("tracking/textures").shape[1]
    blend = cache.record("tracking/blend_weights").shape[1]
    vae = save_lightning_checkpoint(HeadVAE(texture_size=texture, num_blend_shapes=blend,
                                            latent_dim=AVATAR_LATENT_DIM, width=4, perceptual_weight=0.0,
                                            adversarial_weight=0.0), work / "vae.ckpt")
    rerender = save_lightning_checkpoint(Rerenderer(depth=3, width=8, perceptual_weight=0.0), work / "rerender.ckpt")
    animator = save_lightning_checkpoint(Animator(features="mediapipe", hidden=16, residual_dim=4, feature_dim=1434,
                              latent_dim=AVATAR_LATENT_DIM), work / "animator.ckpt")
    return export_avatar(cache, work / "avatar", vae, rerender, animator)


@pytest.fixture
def shared_dir() -> Path:
    """``../shared`` beside the repository; tests that need it skip where it is absent (a user's clone)."""
    if not SHARED_DIR.is_dir():
        pytest.skip("../shared is absent (only developer and CI machines have it)")
    return SHARED_DIR


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
