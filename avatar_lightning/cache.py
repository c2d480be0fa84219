"""The capture cache: the one on-disk data contract every stage reads and writes.

A cache is a folder of ``.npy`` arrays plus ``manifest.json``. Arrays are named by their path without the
``.npy`` suffix (``cameras/front/frames``, ``tracking/pose``, ``features/mediapipe``) and read with
``np.load(mmap_mode="r")`` so a window of frames costs the window, not the capture.

Writes are atomic: an array is written under a temporary name and renamed into place, then the manifest is
rewritten (also via rename). A stage killed mid-write leaves the previous manifest and arrays intact and no
manifest entry for the half-written array. Readers validate manifest and headers and say which command
produces what is missing.

Layout (see ``../shared/DESIGN.md``)::

    manifest.json
    template/{vertices,triangles,uvs,blend_basis}.npy
    cameras/<name>/frames.npy        (N, H, W, 3) uint8
    cameras/<name>/clean_plate.npy   (H, W, 3) uint8
    tracking/{pose (N, 6), blend_weights (N, B), textures (N, T, T, 3) uint8}.npy
    features/<extractor>.npy (N, D), features/<extractor>.valid.npy (N,) bool
    latents/<run>.npy (N, Z), renders/<run>/<camera>.npy
    truth/...                        ground truth of synthetic captures
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import mmap
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")

# Which command writes which array: used in every "missing array" message. First match wins.
PRODUCERS: tuple[tuple[str, str], ...] = (
    ("cameras/*/frames", "`python -m avatar_lightning synth` (synthetic actor), `prepare` (real capture) or `ingest` "
                         "(driving video)"),
    ("cameras/*/clean_plate", "`python -m avatar_lightning synth` (synthetic actor) or `prepare` (real capture)"),
    ("template/*", "`python -m avatar_lightning synth` (synthetic actor) or `prepare` (real capture)"),
    ("tracking/*", "`python -m avatar_lightning synth` (synthetic actor) or `prepare` (real capture)"),
    ("truth/*", "`python -m avatar_lightning synth` (only synthetic captures carry ground truth)"),
    ("features/*", "`python -m avatar_lightning features --cache DIR --extractor NAME`"),
    ("latents/*", "`python -m avatar_lightning encode --ckpt HEAD_VAE.ckpt --cache DIR --name RUN`"),
    ("renders/*", "`python -m avatar_lightning render-mesh --ckpt HEAD_VAE.ckpt --cache DIR --name RUN` (I_orig)"),
)

# Float arrays where NaN marks "no face in this frame" (with a ``.valid`` mask beside them). Every other float
# array must be finite: a writer refuses NaN/Inf before the array is listed, and readers that train or render
# on an array check it (:meth:`CaptureCache.require_finite`).
MAY_HOLD_NAN: tuple[str, ...] = ("tracking/landmarks/*",)
_FINITE_SCAN_BYTES = 64 << 20  # rows scanned per step: memory stays flat in the array's length

_ARRAY_NAME = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


class CacheError(RuntimeError):
    """A capture cache is missing, malformed, or lacks what a stage needs."""


def must_be_finite(name: str, dtype: Any) -> bool:
    """Whether array ``name`` of ``dtype`` may hold only finite values (see :data:`MAY_HOLD_NAN`)."""
    kind = np.dtype(dtype).kind
    return kind in "fc" and not any(fnmatch.fnmatchcase(name, pattern) for pattern in MAY_HOLD_NAN)


def nonfinite_rows(data: np.ndarray) -> tuple[int, int | None]:
    """``(rows holding NaN or Inf, the first such row)`` of a (memory-mapped) array, scanned in slabs."""
    if data.dtype.kind not in "fc" or data.size == 0:
        return 0, None
    rows = data.reshape(1, -1) if data.ndim == 0 else data
    step = max(1, _FINITE_SCAN_BYTES // max(1, rows[0].nbytes))
    count, first = 0, None
    for start in range(0, len(rows), step):
        slab = np.asarray(rows[start : start + step])
        bad = ~np.isfinite(slab.reshape(len(slab), -1)).all(axis=1)
        if bad.any():
            count += int(bad.sum())
            first = start + int(np.argmax(bad)) if first is None else first
    return count, first


def producer_of(name: str) -> str:
    """The command that writes array ``name``, for error messages."""
    for pattern, command in PRODUCERS:
        if fnmatch.fnmatchcase(name, pattern):
            return command
    return "the stage that writes it"


@dataclass(frozen=True)
class SequenceRecord:
    """A contiguous run of frames ``first..last`` (inclusive) belonging to one split."""

    name: str
    first: int
    last: int
    split: str

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise CacheError(f"sequence {self.name!r}: split must be one of {SPLITS}, got {self.split!r}")
        if not (0 <= self.first <= self.last):
            raise CacheError(f"sequence {self.name!r}: need 0 <= first <= last, got {self.first}..{self.last}")

    @property
    def num_frames(self) -> int:
        return self.last - self.first + 1



@dataclass(frozen=True)
class CameraRecord:
    """A calibrated pinhole camera in OpenCV convention: ``X_cam = R @ X_world + t``, x right, y down, z forward.

    ``K`` is the 3x3 intrinsic matrix in pixels (pixel centres at integer + 0.5), ``width``/``height`` the
    image size.
    """

    name: str
    K: list[list[float]]
    R: list[list[float]]
    t: list[float]
    width: int
    height: int

    def __post_init__(self) -> None:
        for key, shape in (("K", (3, 3)), ("R", (3, 3)), ("t", (3,))):
            value = np.asarray(getattr(self, key), dtype=np.float64)
            if value.shape != shape or not np.isfinite(value).all():
                raise CacheError(f"camera {self.name!r}: {key} must be a finite array of shape {shape}")
        if self.width <= 0 or self.height <= 0:
            raise CacheError(f"camera {self.name!r}: width and height must be positive")


@dataclass(frozen=True)
class ArrayRecord:
    """What the manifest knows of one array: where it is, its header, who wrote it."""

    file: str
    shape: tuple[int, ...]
    dtype: str
    stage: str
    per_frame: bool = False


@dataclass
class Manifest:
    """The content of ``manifest.json``."""

    fps: float
    num_frames: int
    sequences: list[SequenceRecord] = field(default_factory=list)
    cameras: list[CameraRecord] = field(default_factory=list)
    arrays: dict[str, ArrayRecord] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "fps": self.fps,
            "num_frames": self.num_frames,
            "sequences": [asdict(s) for s in self.sequences],
            "cameras": [asdict(c) for c in self.cameras],
            "arrays": {
                name: {**asdict(rec), "shape": list(rec.shape)} for name, rec in sorted(self.arrays.items())
            },
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: Any, source: Path) -> Manifest:
        """Parse and validate; every problem names ``source``."""
        if not isinstance(data, dict):
            raise CacheError(f"{source}: manifest must be a JSON object")
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise CacheError(f"{source}: missing or non-integer 'schema_version'")
        if version > SCHEMA_VERSION:
            raise CacheError(
                f"{source}: schema version {version} is newer than this avatar_lightning understands "
                f"({SCHEMA_VERSION}); upgrade avatar_lightning to read it"
            )
        if version < 1:
            raise CacheError(f"{source}: invalid schema version {version}")
        try:
            manifest = cls(
                fps=float(data["fps"]),
                num_frames=int(data["num_frames"]),
                sequences=[SequenceRecord(**s) for s in data.get("sequences", [])],
                cameras=[CameraRecord(**c) for c in data.get("cameras", [])],
                arrays={
                    name: ArrayRecord(**{**rec, "shape": tuple(int(d) for d in rec["shape"])})
                    for name, rec in data.get("arrays", {}).items()
                },
                meta=dict(data.get("meta", {})),
                schema_version=version,
            )
        except CacheError as err:
            raise CacheError(f"{source}: {err}") from None
        except (KeyError, TypeError, ValueError) as err:
            raise CacheError(f"{source}: malformed manifest ({type(err).__name__}: {err})") from None
        manifest.validate(source)
        return manifest

    def validate(self, source: Path | str) -> None:
        """Cross-field checks: frame ranges, unique names, per-frame lengths."""
        if self.fps <= 0 or self.num_frames < 0:
            raise CacheError(f"{source}: fps must be positive and num_frames non-negative")
        names = [s.name for s in self.sequences]
        if len(set(names)) != len(names):
            raise CacheError(f"{source}: duplicate sequence names in {names}")
        for seq in self.sequences:
            if seq.last >= self.num_frames:
                raise CacheError(
                    f"{source}: sequence {seq.name!r} ends at frame {seq.last} but the cache has "
                    f"{self.num_frames} frames"
                )
        spans = sorted((s.first, s.last, s.name) for s in self.sequences)
        for (_, last_a, a), (first_b, _, b) in zip(spans, spans[1:], strict=False):
            if first_b <= last_a:
                raise CacheError(f"{source}: sequences {a!r} and {b!r} overlap")
        cams = [c.name for c in self.cameras]
        if len(set(cams)) != len(cams):
            raise CacheError(f"{source}: duplicate camera names in {cams}")
        for name, rec in self.arrays.items():
            if rec.per_frame and (not rec.shape or rec.shape[0] != self.num_frames):
                raise CacheError(
                    f"{source}: per-frame array {name!r} has shape {rec.shape}, expected "
                    f"{self.num_frames} frames first"
                )


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp's 0600 would hide a cache from its group)."""
    return 0o666 & ~_umask()


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, new_file_mode())
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse an output folder holding a cache (unless ``overwrite``), a file, or unrelated files."""
    if (out / MANIFEST_NAME).exists() and not overwrite:
        raise CacheError(f"{out / MANIFEST_NAME} already exists; pass --overwrite to replace that cache")
    if out.exists() and not out.is_dir():
        raise CacheError(f"{out} exists and is not a directory")
    if out.is_dir() and not (out / MANIFEST_NAME).exists() and any(out.iterdir()):
        raise CacheError(f"{out} exists, is not empty and is not a capture cache; choose another --out")


def staging_folder(out: Path, stage: str) -> Path:
    """A hidden folder beside ``out`` to build a whole cache in; :func:`commit_staging` moves it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.{stage}-", dir=out.parent))
    os.chmod(staging, 0o777 & ~_umask())  # a plain mkdir's mode, not mkdtemp's 0700
    return staging


def commit_staging(staging: Path, out: Path) -> None:
    """Move a finished cache into place; an old cache at ``out`` is moved aside first and then removed."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.replace(old / "cache")
    staging.replace(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def release_pages(array: np.ndarray) -> None:
    """Drop the pages of the memory map behind ``array`` from this process's resident set (in-memory arrays: no-op).

    Why: a memory map's pages count in RSS for as long as the mapping lives, so streaming through a long capture
    (ingest writing it, features or animate reading it) grew RSS by the file's size. Written pages are flushed
    first; the data stay on disk and in the page cache, and the next access faults them back in.
    """
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, mmap.mmap) and not base.closed:
        base.flush()  # no-op for a read-only map
        base.madvise(mmap.MADV_DONTNEED)


class PageBudget:
    """Calls :func:`release_pages` on the arrays it was shown once ``budget`` bytes went through them."""

    def __init__(self, budget: int = 256 * 2**20) -> None:
        self.budget, self.spent = budget, 0
        self.arrays: dict[int, np.ndarray] = {}

    def charge(self, array: np.ndarray, nbytes: int) -> None:
        self.arrays[id(array)] = array
        self.spent += nbytes
        if self.spent >= self.budget:
            for mapped in self.arrays.values():
                release_pages(mapped)
            self.arrays.clear()
            self.spent = 0


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
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy.tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp_name, new_file_mode())
        tmp = Path(tmp_name)
        try:
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
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
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
