"""LightningDataModules over the capture cache."""

from datamodules.windows import CacheDataModule, CacheWindowDataset, window_starts

__all__ = ["CacheDataModule", "CacheWindowDataset", "window_starts"]
