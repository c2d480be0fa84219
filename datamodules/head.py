"""Per-frame UV textures and blend weights for the head VAE, split by sequence."""

from __future__ import annotations

from avatar_lightning.cache.layout import BLEND_WEIGHTS, FACE_SEEN, TEXTURES
from datamodules.windows import CacheDataModule


class HeadDataModule(CacheDataModule):
    """Batches of single frames: ``texture (B, 1, T, T, 3) uint8`` and ``blend (B, 1, K) float32``.

    Args:
        cache_dir: the capture cache folder (``synth`` or a real capture's ``prepare`` writes the arrays).
        batch_size: frames per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the training shuffle.
        textures: cache array of the UV textures.
        blend_weights: cache array of the blend weights.
        faces_only: train and validate only on frames where ``prepare`` saw the face (``tracking/face_seen``); the
            others hold interpolated guesses. False takes every frame.
    """

    def __init__(self, cache_dir: str, batch_size: int = 16, num_workers: int = 0, seed: int = 0,
                 textures: str = TEXTURES, blend_weights: str = BLEND_WEIGHTS, faces_only: bool = True) -> None:
        super().__init__(cache_dir, {"texture": textures, "blend": blend_weights}, window=1, batch_size=batch_size,
                         num_workers=num_workers, seed=seed, only=FACE_SEEN if faces_only else None)

    @property
    def texture_size(self) -> int:
        return self.cache.record(self.arrays["texture"]).shape[1]

    @property
    def num_blend_shapes(self) -> int:
        return self.cache.record(self.arrays["blend"]).shape[1]
