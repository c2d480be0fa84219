"""``CaptureCache``: read and write one capture cache folder (see :mod:`avatar_lightning.cache`)."""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avatar_lightning.cache.files import atomic_path, atomic_write_text
from avatar_lightning.cache.finite import must_be_finite, nonfinite_rows
from avatar_lightning.cache.layout import producer_of
from avatar_lightning.cache.manifest import (
    MANIFEST_NAME,
    SPLITS,
    ArrayRecord,
    CameraRecord,
    Manifest,
    SequenceRecord,
)
from avatar_lightning.errors import CacheError

_ARRAY_NAME = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


class CaptureCache:
    """Read and write a capture cache folder.

    Open an existing cache with ``CaptureCache(root)``; make a new one with ``CaptureCache.create(...)``.
    Arrays are added with :meth:`write_array` (whole array in memory) or :meth:`array_writer` (filled in
    chunks through a memory map: a 3-minute capture never has to fit in RAM).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise CacheError(
                f"capture cache {self.root} does not exist; create one with `python -m avatar_lightning synth "
                f"--out {self.root}` (synthetic actor) or `ingest` (driving video)"
            )
        if not self.root.is_dir():
            raise CacheError(f"capture cache {self.root} is not a directory")
        self.manifest = self._read_manifest()

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        root: str | os.PathLike[str],
        *,
        fps: float,
        num_frames: int,
        sequences: Sequence[SequenceRecord] = (),
        cameras: Sequence[CameraRecord] = (),
        meta: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> CaptureCache:
        """Start a new cache at ``root``; refuses to replace an existing cache unless ``overwrite``.

        With ``overwrite`` only the manifest is replaced; stale array files stay on disk but are no longer
        listed (a stage never deletes data it did not write).
        """
        root = Path(root)
        manifest_path = root / MANIFEST_NAME
        if manifest_path.exists() and not overwrite:
            raise CacheError(f"{manifest_path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        if root.exists() and not root.is_dir():
            raise CacheError(f"{root} exists and is not a directory")
        root.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(
            fps=float(fps),
            num_frames=int(num_frames),
            sequences=list(sequences),
            cameras=list(cameras),
            meta=dict(meta or {}),
        )
        manifest.validate(manifest_path)
        atomic_write_text(manifest_path, json.dumps(manifest.to_json(), indent=2))
        return cls(root)

    # ------------------------------------------------------------------ manifest
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    def _read_manifest(self) -> Manifest:
        path = self.manifest_path
        if not path.exists():
            raise CacheError(
                f"{path} is missing: {self.root} is not a capture cache, or the stage creating it was "
                "interrupted; re-run `python -m avatar_lightning synth` (or `ingest`) to create it"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CacheError(f"{path}: not valid JSON ({err})") from None
        return Manifest.from_json(data, path)

    @contextlib.contextmanager
    def _manifest_lock(self) -> Iterator[None]:
        """Serialise read-modify-write of the manifest between processes (e.g. DDP ranks)."""
        with open(self.root / ".manifest.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _update_manifest(self, mutate: Any) -> None:
        with self._manifest_lock():
            manifest = self._read_manifest()  # someone else may have added arrays meanwhile
            mutate(manifest)
            manifest.validate(self.manifest_path)
            atomic_write_text(self.manifest_path, json.dumps(manifest.to_json(), indent=2))
            self.manifest = manifest

    def reload(self) -> None:
        self.manifest = self._read_manifest()

    def set_meta(self, **values: Any) -> None:
        self._update_manifest(lambda m: m.meta.update(values))

    def set_cameras(self, cameras: Sequence[CameraRecord]) -> None:
        """Replace the camera records (``prepare`` knows them only after calibrating from the frames)."""
        names = [c.name for c in self.manifest.cameras]
        if [c.name for c in cameras] != names:
            raise CacheError(f"{self.manifest_path}: set_cameras must keep the cameras {names}")
        self._update_manifest(lambda m: setattr(m, "cameras", list(cameras)))

    # ------------------------------------------------------------------ convenience views
    @property
    def fps(self) -> float:
        return self.manifest.fps

    @property
    def num_frames(self) -> int:
        return self.manifest.num_frames

    @property
    def sequences(self) -> list[SequenceRecord]:
        return list(self.manifest.sequences)

    @property
    def cameras(self) -> list[CameraRecord]:
        return list(self.manifest.cameras)

    def camera(self, name: str) -> CameraRecord:
        for cam in self.manifest.cameras:
            if cam.name == name:
                return cam
        known = [c.name for c in self.manifest.cameras]
        raise CacheError(f"{self.manifest_path}: no camera {name!r}; cameras are {known}")

    def sequences_in(self, splits: str | Sequence[str]) -> list[SequenceRecord]:
        """Sequences of one split or several, in frame order."""
        wanted = {splits} if isinstance(splits, str) else set(splits)
        unknown = wanted - set(SPLITS)
        if unknown:
            raise CacheError(f"unknown split(s) {sorted(unknown)}; splits are {SPLITS}")
        return sorted((s for s in self.manifest.sequences if s.split in wanted), key=lambda s: s.first)

    def rows_in(self, splits: str | Sequence[str]) -> np.ndarray:
        """``(F,) int64``: every frame of :meth:`sequences_in` ``splits``, in order (empty where there are none)."""
        return np.concatenate([np.arange(s.first, s.last + 1) for s in self.sequences_in(splits)] or
                              [np.arange(0)])

    def has(self, name: str) -> bool:
        return name in self.manifest.arrays

    def names(self, pattern: str = "*") -> list[str]:
        """Array names matching a glob pattern, e.g. ``features/*``."""
        return sorted(n for n in self.manifest.arrays if fnmatch.fnmatchcase(n, pattern))

    def record(self, name: str) -> ArrayRecord:
        rec = self.manifest.arrays.get(name)
        if rec is None:
            raise CacheError(
                f"{self.root}: array {name!r} is missing; it is written by {producer_of(name)}"
            )
        return rec

    # ------------------------------------------------------------------ reading
    def array(self, name: str) -> np.ndarray:
        """A read-only memory map of array ``name``, its header checked against the manifest."""
        rec = self.record(name)
        path = self.root / rec.file
        if not path.exists():
            raise CacheError(f"{path}: listed in the manifest as {name!r} but missing on disk; re-run "
                             f"{producer_of(name)}")
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            raise CacheError(f"{path}: unreadable .npy file ({err}); re-run {producer_of(name)}") from None
        if tuple(data.shape) != rec.shape or str(data.dtype) != rec.dtype:
            raise CacheError(
                f"{path}: holds {data.dtype}{list(data.shape)} but the manifest says {rec.dtype}{list(rec.shape)}; "
                f"the file was changed outside avatar_lightning; re-run {producer_of(name)}"
            )
        return data

    def require_finite(self, name: str) -> np.ndarray:
        """:meth:`array`, refused with a :class:`CacheError` if it holds NaN or Inf where it must not."""
        data = self.array(name)
        if must_be_finite(name, data.dtype):
            count, first = nonfinite_rows(data)
            if count:
                raise CacheError(
                    f"{self.root / self.record(name).file}: {count} of {len(data)} rows of {name!r} hold NaN or Inf "
                    f"(first: row {first}); re-run {producer_of(name)}"
                )
        return data

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of array ``name`` as an in-memory array; only those rows are read from disk."""
        return np.array(self.array(name)[start:stop])

    # ------------------------------------------------------------------ writing
    def _check_new(self, name: str, shape: tuple[int, ...], per_frame: bool) -> Path:
        if not _ARRAY_NAME.match(name) or ".." in name.split("/"):
            raise CacheError(f"invalid array name {name!r}: use path segments of letters, digits, '_', '-', '.'")
        if per_frame and (not shape or shape[0] != self.num_frames):
            raise CacheError(
                f"per-frame array {name!r} must have {self.num_frames} rows first, got shape {list(shape)}"
            )
        path = self.root / f"{name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _register(self, name: str, path: Path, shape: tuple[int, ...], dtype: np.dtype, stage: str,
                  per_frame: bool) -> None:
        record = ArrayRecord(
            file=str(path.relative_to(self.root)), shape=tuple(int(d) for d in shape), dtype=str(dtype),
            stage=stage, per_frame=per_frame,
        )
        self._update_manifest(lambda m: m.arrays.__setitem__(name, record))

    def write_array(self, name: str, data: np.ndarray, *, stage: str, per_frame: bool = False) -> None:
        """Write a whole array atomically and list it in the manifest."""
        data = np.ascontiguousarray(data)
        with self.array_writer(name, data.shape, data.dtype, stage=stage, per_frame=per_frame) as out:
            out[...] = data

    @contextlib.contextmanager
    def array_writer(
        self, name: str, shape: Sequence[int], dtype: Any, *, stage: str, per_frame: bool = False
    ) -> Iterator[np.memmap]:
        """Yield a writable memory map to fill in chunks; it becomes ``name`` only if the block completes.

        On an exception (or a killed process) the temporary file is removed (or left as an unlisted
        ``.tmp`` file) and the manifest still describes the previous state.
        """
        shape = tuple(int(d) for d in shape)
        dtype = np.dtype(dtype)
        if dtype.hasobject:
            raise CacheError(f"array {name!r}: object arrays cannot be stored in a capture cache")
        path = self._check_new(name, shape, per_frame)
        with atomic_path(path) as tmp:  # renamed into place only if the block completes
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            yield out
            out.flush()
            if must_be_finite(name, dtype):
                count, first = nonfinite_rows(out)
                if count:
                    raise CacheError(
                        f"{stage}: refusing to write {name!r} to {self.root}: {count} of {shape[0] if shape else 1} "
                        f"rows hold NaN or Inf (first: row {first}); nothing was written"
                    )
            del out
        self._register(name, path, shape, dtype, stage, per_frame)

    # ------------------------------------------------------------------ summary
    def describe(self) -> str:
        """A human-readable summary: sequences, cameras, arrays with shape and the stage that wrote them."""
        m = self.manifest
        lines = [f"capture cache {self.root} (schema {m.schema_version}): {m.num_frames} frames at {m.fps:g} fps"]
        lines.append("sequences:")
        lines += [f"  {s.name:<16} {s.split:<5} frames {s.first}..{s.last} ({s.num_frames})" for s in m.sequences]
        lines.append("cameras:")
        lines += [f"  {c.name:<16} {c.width}x{c.height}" for c in m.cameras]
        lines.append("arrays:")
        lines += [
            f"  {name:<32} {rec.dtype:<8} {str(list(rec.shape)):<24} by {rec.stage}"
            for name, rec in sorted(m.arrays.items())
        ]
        return "\n".join(lines)
