"""Shared fixtures: tiny generated caches, the location of ../shared, markers for GPU tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avatar_lightning.cache import CaptureCache
from avatar_lightning.testing import make_avatar, make_tiny_cache
from tests.helpers import AVATAR_LATENT_DIM, SHARED_DIR


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
    return make_avatar(tmp_path_factory.mktemp("avatar"), synthetic_tiny.root, AVATAR_LATENT_DIM)


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
