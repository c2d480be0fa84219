"""LightningDataModules over the capture cache."""

from datamodules.head import HeadDataModule
from datamodules.windows import CacheDataModule, CacheWindowDataset, window_starts

__all__ = ["CacheDataModule", "CacheWindowDataset", "HeadDataModule", "window_starts"]
