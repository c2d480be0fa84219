"""The manifest of a capture cache: what ``manifest.json`` holds, and the checks it must pass when read.

Schema version, fps and frame count; sequences (a contiguous run of frames in one split); cameras (OpenCV
convention); and every array with its file, header, the stage that wrote it and whether it has a row per frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from avatar_lightning.errors import CacheError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")


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

