"""LightningDataModules over the capture cache."""

from datamodules.frames import ContiguousSampler, FramesDataModule
from datamodules.head import HeadDataModule
from datamodules.windows import CacheDataModule, CacheWindowDataset, window_starts

__all__ = [
    "CacheDataModule",
    "CacheWindowDataset",
    "ContiguousSampler",
    "FramesDataModule",
    "HeadDataModule",
    "window_starts",
]
