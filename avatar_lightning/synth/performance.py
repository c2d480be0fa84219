"""Smooth, natural performances: speech-like jaw motion, blinks, emotions and rigid head motion.

A performance is per-frame blend weights ``(N, K)`` in [0, 1] and a head pose ``(N, 6)`` (axis-angle in
radians, translation in metres). Speech is phrases of syllables (about 4 per second) separated by pauses;
each syllable opens the jaw and shapes the lips (rounded vowels pucker and funnel). Emotions are held for a
few seconds and blend smoothly into the next. Blinks come at random, about every 4 seconds. The head turns
within +-25 degrees of yaw, nods and tilts a little, all as smooth random curves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatar_lightning.synth.blendshapes import BLEND_SHAPE_NAMES

K = {name: k for k, name in enumerate(BLEND_SHAPE_NAMES)}

EMOTIONS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"smile_left": 0.8, "smile_right": 0.8, "cheek_puff": 0.15},
    "grin": {"smile_left": 1.0, "smile_right": 0.7, "upper_lip_up": 0.3},
    "sad": {"frown_left": 0.7, "frown_right": 0.7, "brow_up_left": 0.35, "brow_up_right": 0.35},
    "surprised": {"brow_up_left": 0.9, "brow_up_right": 0.9, "jaw_open": 0.35, "funnel": 0.3},
    "angry": {"brow_down": 0.9, "frown_left": 0.4, "frown_right": 0.4, "upper_lip_up": 0.3},
    "sceptical": {"brow_up_left": 0.8, "brow_down": 0.3, "smile_right": 0.3, "jaw_left": 0.3},
    "puffed": {"cheek_puff": 0.9, "pucker": 0.4},
}


@dataclass(frozen=True)
class PerformanceStyle:
    """How much of each ingredient a sequence has."""

    speech: float = 0.7  # fraction of time spent speaking
    emotion_seconds: tuple[float, float] = (2.0, 6.0)
    max_yaw_degrees: float = 25.0
    blink_interval_seconds: float = 4.0


def _smooth_noise(
    num_frames: int, fps: float, rng: np.random.Generator, period_seconds: tuple[float, float], components: int = 4
) -> np.ndarray:
    """``(N,)`` a sum of random sinusoids with periods in the given range, scaled to about [-1, 1]."""
    t = np.arange(num_frames) / fps
    periods = rng.uniform(*period_seconds, size=components)
    phases = rng.uniform(0, 2 * np.pi, size=components)
    amps = rng.uniform(0.5, 1.0, size=components)
    signal = (amps[:, None] * np.sin(2 * np.pi * t[None] / periods[:, None] + phases[:, None])).sum(0)
    return signal / amps.sum() * 1.6


def _bump(t: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A raised-cosine pulse of total duration ``width`` seconds."""
    x = np.clip((t - centre) / (width / 2), -1, 1)
    return 0.5 * (1 + np.cos(np.pi * x))


def _speech(num_frames: int, fps: float, rng: np.random.Generator, amount: float) -> np.ndarray:
    weights = np.zeros((num_frames, len(BLEND_SHAPE_NAMES)))
    if num_frames == 0:
        return weights
    t = np.arange(num_frames) / fps
    clock = rng.uniform(0, 0.5)
    while clock < t[-1]:
        phrase = rng.uniform(1.2, 3.5)
        speaking = rng.random() < amount
        if speaking:
            syllable = clock
            while syllable < min(clock + phrase, t[-1]):
                duration = rng.uniform(0.16, 0.32)
                bump = _bump(t, syllable + duration / 2, duration * 1.3)
                rounded = rng.random() < 0.3
                weights[:, K["jaw_open"]] += bump * rng.uniform(0.15, 0.7) * (0.6 if rounded else 1.0)
                if rounded:
                    weights[:, K["pucker" if rng.random() < 0.5 else "funnel"]] += bump * rng.uniform(0.3, 0.8)
                else:
                    weights[:, K["lower_lip_down"]] += bump * rng.uniform(0.0, 0.4)
                    weights[:, K["upper_lip_up"]] += bump * rng.uniform(0.0, 0.25)
                syllable += duration
        clock += phrase + rng.uniform(0.3, 1.0)
    return weights


def _emotions(num_frames: int, fps: float, rng: np.random.Generator, style: PerformanceStyle) -> np.ndarray:
    names = list(EMOTIONS)
    keys, targets = [0.0], [np.zeros(len(BLEND_SHAPE_NAMES))]
    end = num_frames / fps
    while keys[-1] < end:
        keys.append(keys[-1] + rng.uniform(*style.emotion_seconds))
        emotion = EMOTIONS[names[rng.integers(len(names))]]
        target = np.zeros(len(BLEND_SHAPE_NAMES))
        for name, value in emotion.items():
            target[K[name]] = value * rng.uniform(0.6, 1.1)
        targets.append(target)
    keys_arr, targets_arr = np.array(keys), np.stack(targets)
    t = np.arange(num_frames) / fps
    # Hold each emotion, with smooth (cosine) transitions of about a second between them.
    idx = np.clip(np.searchsorted(keys_arr, t, side="right") - 1, 0, len(keys_arr) - 2)
    since = t - keys_arr[idx]
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.clip(since / 0.9, 0, 1))
    return targets_arr[idx] + ramp[:, None] * (targets_arr[idx + 1] - targets_arr[idx])


def _blinks(num_frames: int, fps: float, rng: np.random.Generator, interval: float) -> np.ndarray:
    weights = np.zeros((num_frames, len(BLEND_SHAPE_NAMES)))
    t = np.arange(num_frames) / fps
    clock = rng.exponential(interval / 2)
    while num_frames and clock < t[-1]:
        blink = _bump(t, clock, rng.uniform(0.18, 0.3))
        if rng.random() < 0.08:  # a wink
            weights[:, K["blink_left" if rng.random() < 0.5 else "blink_right"]] += blink
        else:
            weights[:, K["blink_left"]] += blink
            weights[:, K["blink_right"]] += blink
        clock += rng.exponential(interval) + 0.3
    return weights


def generate_performance(
    num_frames: int, fps: float, rng: np.random.Generator, style: PerformanceStyle | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Blend weights ``(N, K)`` float32 in [0, 1] and pose ``(N, 6)`` float32 for one sequence."""
    style = style or PerformanceStyle()
    weights = (
        _speech(num_frames, fps, rng, style.speech)
        + _emotions(num_frames, fps, rng, style)
        + _blinks(num_frames, fps, rng, style.blink_interval_seconds)
    )
    weights = np.clip(weights, 0.0, 1.0)
    yaw = np.deg2rad(style.max_yaw_degrees) * np.clip(_smooth_noise(num_frames, fps, rng, (3.0, 9.0)), -1, 1)
    pitch = np.deg2rad(8.0) * np.clip(_smooth_noise(num_frames, fps, rng, (2.0, 6.0)), -1, 1)
    roll = np.deg2rad(5.0) * np.clip(_smooth_noise(num_frames, fps, rng, (3.0, 8.0)), -1, 1)
    shift = 0.012 * np.stack([_smooth_noise(num_frames, fps, rng, (3.0, 10.0)) for _ in range(3)], 1)
    pose = np.concatenate([_euler_to_axis_angle(yaw, pitch, roll), shift], 1)
    return weights.astype(np.float32), pose.astype(np.float32)


def _euler_to_axis_angle(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Rotation ``R = R_y(yaw) R_x(pitch) R_z(roll)`` per frame as axis-angle ``(N, 3)``."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("YXZ", np.stack([yaw, pitch, roll], 1)).as_rotvec()
