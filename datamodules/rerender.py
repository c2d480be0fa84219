"""(frame, camera) pairs for the re-render U-Net: the mesh rendering I_orig, the captured frame, the clean plate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from avatar_lightning.cache.layout import (
    FACE_SEEN,
    clean_plate_array,
    foreground_array,
    frames_array,
    render_mask_name,
    render_name,
    torso_sway_array,
)
from avatar_lightning.cache.manifest import SequenceRecord
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.errors import CacheError
from avatar_lightning.render.body import read_body_layer
from datamodules.windows import CacheDataModule, CacheWindowDataset


def _image(array: Tensor) -> Tensor:
    """``(H, W, 3)`` or ``(H, W)`` uint8 -> ``(3 | 1, H, W)`` float in [0, 1]."""
    array = array if array.dim() == 3 else array[..., None]
    return array.permute(2, 0, 1).float() / 255


class CameraFrames(Dataset):
    """One camera's frames of some sequences: single-frame windows of its arrays plus its clean plate.

    Item: ``i_orig (3, H, W)``, ``coverage (1, H, W)`` (where the mesh covers the pixel), ``frame (3, H, W)``,
    ``plate (3, H, W)`` (the clean plate, with the body plate moved by the frame's torso sway where the cache has
    one: ``render.body``), all float in [0, 1]; ``foreground (1, H, W)`` where the cache has the true mask
    (synthetic captures); ``frame_index ()`` int64 and ``camera ()`` int64 (the index into the cache's cameras).
    """

    def __init__(self, root: str | Path, run: str, camera: str, camera_index: int,
                 sequences: Sequence[SequenceRecord], only: str | None = None) -> None:
        cache = CaptureCache(root)
        arrays = {"i_orig": render_name(run, camera), "coverage": render_mask_name(run, camera),
                  "frame": frames_array(camera)}
        if cache.has(foreground_array(camera)):
            arrays["foreground"] = foreground_array(camera)
        self.body = read_body_layer(cache, camera)
        if self.body is not None:  # each frame's plate: the body plate moved by the torso's sway in that frame
            arrays["torso_sway"] = torso_sway_array(camera)
        self.windows = CacheWindowDataset(root, arrays, sequences, window=1, only=only)
        self.plate = _image(torch.from_numpy(cache.read(clean_plate_array(camera))))  # (3, H, W)
        self.camera_index = camera_index

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        window = self.windows[index]
        item = {key: _image(value[0]) for key, value in window.items() if key not in ("frame_index", "torso_sway")}
        if self.body is None:
            item["plate"] = self.plate
        else:
            sway = torch.as_tensor(window["torso_sway"][0], dtype=torch.float32)[None]
            item["plate"] = self.body.plates(self.plate[None], sway)[0]
        item["frame_index"] = window["frame_index"][0]
        item["camera"] = torch.tensor(self.camera_index, dtype=torch.int64)
        return item


class RerenderDataModule(CacheDataModule):
    """Batches over (frame, camera) pairs of ``renders/<run>/<camera>`` (I_orig), frames and clean plates.

    Split by sequence like every cache DataModule (training shuffled with ``seed``); items as in
    :class:`CameraFrames`. ``python -m avatar_lightning render-mesh`` writes the renders.

    Args:
        cache_dir: the capture cache folder.
        run: the render run: ``renders/<run>/<camera>`` arrays.
        cameras: camera names to use (None: all cameras of the cache).
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the training shuffle.
        train_splits: which splits train on.
        faces_only: train and validate only on frames where ``prepare`` saw the face (``tracking/face_seen``):
            elsewhere I_orig shows an interpolated guess of a face the frame does not hold. False takes every frame.
    """

    def __init__(self, cache_dir: str, run: str = "head_vae", cameras: list[str] | None = None,
                 batch_size: int = 8, num_workers: int = 0, seed: int = 0,
                 train_splits: list[str] | None = None, faces_only: bool = True) -> None:
        super().__init__(cache_dir, {}, window=1, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         train_splits=train_splits, only=FACE_SEEN if faces_only else None)
        self.run = run
        self.camera_names = list(cameras) if cameras else None

    @property
    def cameras(self) -> list[str]:
        """The camera names served, in the order of the ``camera`` index of each item."""
        known = [c.name for c in self.cache.cameras]
        if self.camera_names is None:
            return known
        unknown = sorted(set(self.camera_names) - set(known))
        if unknown:
            raise CacheError(f"{self.cache_dir}: no camera(s) {unknown}; cameras are {known}")
        return list(self.camera_names)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of the served images (all cameras must share it to batch together)."""
        cache = self.cache
        sizes = {(cache.camera(c).height, cache.camera(c).width) for c in self.cameras}
        if len(sizes) != 1:
            raise CacheError(f"{self.cache_dir}: cameras {self.cameras} differ in image size {sorted(sizes)}")
        return sizes.pop()

    def _dataset(self, splits: Sequence[str], stride: int, only: str | None = None) -> ConcatDataset:
        _height, _width = self.image_size  # checked here: a batch mixes cameras, so they must share a size
        sequences = self.cache.sequences_in(splits)
        return ConcatDataset([CameraFrames(self.cache_dir, self.run, name, index, sequences, only)
                              for index, name in enumerate(self.cameras)])

