"""A semantic blend-shape basis on the face template, built from landmark regions with smooth falloffs.

Each shape is a displacement field ``(V, 3)`` in metres at weight 1 (weights live in [0, 1]). Fields are
smooth (Gaussian falloff around the landmarks that drive them), so the mesh never tears, and local, so the
shapes stay close to independent, as an artist's FACS-like rig is.
"""

from __future__ import annotations

import numpy as np

from avatar_lightning.synth import face as F

BLEND_SHAPE_NAMES: tuple[str, ...] = (
    "jaw_open",
    "jaw_left",
    "jaw_right",
    "smile_left",
    "smile_right",
    "frown_left",
    "frown_right",
    "pucker",
    "funnel",
    "upper_lip_up",
    "lower_lip_down",
    "brow_up_left",
    "brow_up_right",
    "brow_down",
    "blink_left",
    "blink_right",
    "cheek_puff",
)
SIDE_SIGN = {"right": -1.0, "left": 1.0}  # the actor's right is image left (-x)


def _falloff(points: np.ndarray, centres: np.ndarray, sigma: float) -> np.ndarray:
    """``(V,)`` max over centres of exp(-d^2 / 2 sigma^2): 1 on a centre, smooth around it."""
    d2 = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2.min(1) / (2 * sigma**2))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def jaw_weight(v: np.ndarray) -> np.ndarray:
    """How much each vertex follows the jaw: 1 on the lower lip and chin, 0 on the upper lip and above."""
    mouth_y = v[list(F.INNER_LIP_LOOP), 1].mean()
    weight = _smoothstep((v[:, 1] - mouth_y + 0.004) / 0.02)
    weight[list(F.UPPER_LIP)] = 0.0
    weight[list(F.LOWER_LIP)] = 1.0
    return weight


def build_blend_basis(template: F.FaceTemplate) -> np.ndarray:
    """``(K, V, 3)`` float32 offsets, in the order of :data:`BLEND_SHAPE_NAMES`."""
    v = template.vertices[: F.NUM_LANDMARKS].astype(np.float64)
    shapes: dict[str, np.ndarray] = {}
    lips = list(F.UPPER_LIP) + list(F.LOWER_LIP)
    mouth_centre = v[list(F.INNER_LIP_LOOP)].mean(0)
    w_jaw = jaw_weight(v)

    eye_y = v[[33, 133, 263, 362], 1].mean()
    pivot = np.array([0.0, eye_y + 0.035, 0.0])  # near the ears, at the head's rotation depth
    shapes["jaw_open"] = ((v - pivot) @ _rotation_x(0.32).T + pivot - v) * w_jaw[:, None]
    for side in ("left", "right"):
        shift = np.zeros(3)
        shift[0] = 0.009 * SIDE_SIGN[side]
        shapes[f"jaw_{side}"] = w_jaw[:, None] * shift

    for side in ("left", "right"):
        sign = SIDE_SIGN[side]
        corner = v[list(F.MOUTH_CORNERS[side])]
        near_corner = _falloff(v, corner, 0.011)
        cheek = _falloff(v, v[list(F.CHEEKS[side])], 0.014)
        shapes[f"smile_{side}"] = near_corner[:, None] * np.array([0.006 * sign, -0.008, 0.002]) + cheek[
            :, None
        ] * np.array([0.001 * sign, -0.004, -0.002])
        shapes[f"frown_{side}"] = near_corner[:, None] * np.array([-0.001 * sign, 0.007, 0.0])

    near_lips = np.maximum(_falloff(v, v[lips], 0.006), _falloff(v, v[[61, 291]], 0.006))
    towards_centre = (mouth_centre - v) * np.array([0.45, 0.25, 0.0])
    shapes["pucker"] = near_lips[:, None] * (towards_centre + np.array([0.0, 0.0, -0.009]))
    upper = _falloff(v, v[list(F.UPPER_LIP)], 0.005)
    lower = _falloff(v, v[list(F.LOWER_LIP)], 0.005)
    shapes["funnel"] = (
        near_lips[:, None] * (towards_centre * 0.4 + np.array([0.0, 0.0, -0.007]))
        + upper[:, None] * np.array([0.0, -0.004, 0.0])
        + lower[:, None] * np.array([0.0, 0.004, 0.0])
    )
    shapes["upper_lip_up"] = _falloff(v, v[list(F.UPPER_LIP)], 0.007)[:, None] * np.array([0.0, -0.005, -0.001])
    shapes["lower_lip_down"] = _falloff(v, v[list(F.LOWER_LIP)], 0.007)[:, None] * np.array([0.0, 0.005, -0.001])

    for side in ("left", "right"):
        brow = v[list(F.BROWS[side])]
        region = _falloff(v, brow, 0.012) * (v[:, 1] < brow[:, 1].max() + 0.004)  # brow and forehead, not lids
        region = np.maximum(region, 0.35 * _falloff(v, v[list(F.UPPER_LIDS[side])], 0.004))
        shapes[f"brow_up_{side}"] = region[:, None] * np.array([0.0, -0.009, 0.0])
    inner_brows = {side: _falloff(v, v[list(F.INNER_BROWS[side])], 0.010) for side in ("left", "right")}
    shapes["brow_down"] = sum(
        w[:, None] * np.array([-0.003 * SIDE_SIGN[side], 0.006, -0.001]) for side, w in inner_brows.items()
    )

    for side in ("left", "right"):
        upper_idx, lower_idx = list(F.UPPER_LIDS[side]), list(F.LOWER_LIDS[side])
        lower_curve = v[lower_idx][np.argsort(v[lower_idx, 0])]
        target_y = np.interp(v[:, 0], lower_curve[:, 0], lower_curve[:, 1])
        lid = _falloff(v, v[upper_idx], 0.0035)
        above_eye = v[:, 1] <= v[upper_idx, 1].max() + 1e-4
        closing = np.where(above_eye, (target_y - v[:, 1]) * 0.95, 0.0)
        blink = np.zeros_like(v)
        blink[:, 1] = lid * np.clip(closing, 0.0, None)
        shapes[f"blink_{side}"] = blink

    puff = sum(
        _falloff(v, v[list(F.CHEEKS[side])], 0.016)[:, None] * np.array([0.006 * SIDE_SIGN[side], 0.0, -0.006])
        for side in ("left", "right")
    )
    shapes["cheek_puff"] = puff

    basis = np.stack([shapes[name] for name in BLEND_SHAPE_NAMES])  # (K, 468, 3)
    # The added centre vertices follow the loops they close.
    extra = []
    for side in ("right", "left"):
        extra.append(basis[:, list(F.EYE_LOOPS[side])].mean(1))
    extra.append(basis[:, list(F.INNER_LIP_LOOP)].mean(1))
    order = sorted(
        zip([template.eye_centres["right"], template.eye_centres["left"], template.mouth_centre], extra, strict=True)
    )
    full = np.concatenate([basis, np.stack([e for _, e in order], 1)], axis=1)
    if full.shape[1] != len(template.vertices):
        raise AssertionError("blend basis and template disagree on the vertex count")
    return full.astype(np.float32)
