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
    """How much of each ingredient a sequence has; the defaults are the actor's own performance.

    Drivers for cross-identity scores differ from the actor in style (:data:`DRIVER_STYLES`), so a score tells
    whether an animator follows expressions it was not shown in that form, not whether it memorised a generator.
    """

    speech: float = 0.7  # fraction of time spent speaking
    emotion_seconds: tuple[float, float] = (2.0, 6.0)
    max_yaw_degrees: float = 25.0
    blink_interval_seconds: float = 4.0
    tempo: float = 1.0  # >1: faster syllables and emotion changes
    intensity: float = 1.0  # scales speech and emotion amplitudes (blinks stay full)
    emotion: float = 1.0  # 0: a poker face (no held emotions)
    asymmetry: float = 0.0  # in [-1, 1]: left shapes scaled by 1 + a, right shapes by 1 - a
    jaw_sideways: float = 0.0  # amplitude of a slow side-to-side jaw drift (jaw_left / jaw_right)
    range_of_motion: bool = False  # every blend shape raised alone once, spread over the sequence


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


def _speech(num_frames: int, fps: float, rng: np.random.Generator, amount: float, tempo: float = 1.0) -> np.ndarray:
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
                duration = rng.uniform(0.16, 0.32) / tempo
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
        keys.append(keys[-1] + rng.uniform(*style.emotion_seconds) / style.tempo)
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


def _range_of_motion(num_frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Each blend shape raised alone once (random order and peak), the raises spread evenly over the sequence."""
    weights = np.zeros((num_frames, len(BLEND_SHAPE_NAMES)))
    if num_frames == 0:
        return weights
    t = np.arange(num_frames) / fps
    spacing = t[-1] / len(BLEND_SHAPE_NAMES) if num_frames > 1 else 0.0
    for slot, k in enumerate(rng.permutation(len(BLEND_SHAPE_NAMES))):
        centre = (slot + 0.5) * spacing
        weights[:, k] += _bump(t, centre, max(min(0.8, 1.6 * spacing), 2.0 / fps)) * rng.uniform(0.5, 0.9)
    return weights


def _pairs(names: tuple[str, ...]) -> tuple[list[int], list[int]]:
    """Indices of the ``*_left`` shapes and of their ``*_right`` partners."""
    left = [k for k, name in enumerate(names) if name.endswith("_left")]
    return left, [names.index(names[k].removesuffix("_left") + "_right") for k in left]


def generate_performance(
    num_frames: int, fps: float, rng: np.random.Generator, style: PerformanceStyle | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Blend weights ``(N, K)`` float32 in [0, 1] and pose ``(N, 6)`` float32 for one sequence."""
    style = style or PerformanceStyle()
    expressive = _speech(num_frames, fps, rng, style.speech, style.tempo)
    if style.emotion > 0:
        expressive = expressive + style.emotion * _emotions(num_frames, fps, rng, style)
    weights = style.intensity * expressive + _blinks(num_frames, fps, rng, style.blink_interval_seconds)
    if style.range_of_motion:
        weights = weights + style.intensity * _range_of_motion(num_frames, fps, rng)
    if style.jaw_sideways > 0:
        drift = style.jaw_sideways * _smooth_noise(num_frames, fps, rng, (1.5, 4.0))
        weights[:, K["jaw_left"]] += np.clip(drift, 0, None)
        weights[:, K["jaw_right"]] += np.clip(-drift, 0, None)
    if style.asymmetry:
        left, right = _pairs(BLEND_SHAPE_NAMES)
        weights[:, left] *= 1 + style.asymmetry
        weights[:, right] *= 1 - style.asymmetry
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


# Styles of the synthetic drivers that score cross-identity transfer (``synth --identity K --style NAME``). Together
# they move every blend shape; each differs from the actor's ``default`` in one way a real driver would.
DRIVER_STYLES: dict[str, PerformanceStyle] = {
    "default": PerformanceStyle(),
    "speaking": PerformanceStyle(speech=1.0, emotion=0.0, max_yaw_degrees=10.0),
    "emoting": PerformanceStyle(speech=0.0, emotion_seconds=(1.0, 3.0), range_of_motion=True),
    "fast": PerformanceStyle(tempo=1.7, range_of_motion=True),
    "subtle": PerformanceStyle(tempo=0.7, intensity=0.5, range_of_motion=True, max_yaw_degrees=10.0),
    "asymmetric": PerformanceStyle(asymmetry=0.6, jaw_sideways=0.6, range_of_motion=True),
}
