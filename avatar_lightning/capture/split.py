"""Sequences of a prepared capture: split by time into train, val and a held-out test tail (the paper's 30 s).

A long capture keeps the paper's split: the last 30 s are held out, the 10 s before them validate. A clip shorter
than :data:`LONG_CLIP_SECONDS` would lose too much of its training data to that, so it gives fractions instead
(the last 20 % test, the 10 % before validation). Explicit seconds override both.
"""

from __future__ import annotations

from avatar_lightning.cache.manifest import SequenceRecord
from avatar_lightning.errors import CacheError

PAPER_TEST_SECONDS, PAPER_VAL_SECONDS = 30.0, 10.0
LONG_CLIP_SECONDS = 120.0
SHORT_TEST_FRACTION, SHORT_VAL_FRACTION = 0.2, 0.1
MIN_TRAIN_FRAMES = 8  # one animator window


def time_split(num_frames: int, fps: float, test_seconds: float | None = None,
               val_seconds: float | None = None) -> list[SequenceRecord]:
    """``train``, ``val`` and ``test`` sequences in time order; raises CacheError when the clip is too short."""
    seconds = num_frames / fps
    long_clip = seconds >= LONG_CLIP_SECONDS
    if test_seconds is None:
        test_seconds = PAPER_TEST_SECONDS if long_clip else SHORT_TEST_FRACTION * seconds
    if val_seconds is None:
        val_seconds = PAPER_VAL_SECONDS if long_clip else SHORT_VAL_FRACTION * seconds
    if test_seconds < 0 or val_seconds < 0:
        raise CacheError(f"--test-seconds and --val-seconds must be >= 0, got {test_seconds:g} and {val_seconds:g}")
    test = max(1, int(round(test_seconds * fps)))
    val = max(1, int(round(val_seconds * fps)))
    train = num_frames - test - val
    if train < MIN_TRAIN_FRAMES:
        frames = f"{num_frames} frame{'s' if num_frames != 1 else ''}"
        if num_frames < MIN_TRAIN_FRAMES + 2:  # no split could leave a training window
            raise CacheError(f"the capture has {frames} ({seconds:.2f} s at {fps:g} fps); an actor needs at least "
                             f"{MIN_TRAIN_FRAMES + 2}: {MIN_TRAIN_FRAMES} to train on, one to validate, one to test "
                             "(minutes of footage make a good avatar)")
        raise CacheError(
            f"the capture has {frames} ({seconds:.1f} s at {fps:g} fps): too short for {test} frame(s) of test and "
            f"{val} of validation with at least {MIN_TRAIN_FRAMES} training frames left; pass smaller "
            "--test-seconds / --val-seconds"
        )
    return [
        SequenceRecord("train", 0, train - 1, "train"),
        SequenceRecord("val", train, train + val - 1, "val"),
        SequenceRecord("test", train + val, num_frames - 1, "test"),
    ]
