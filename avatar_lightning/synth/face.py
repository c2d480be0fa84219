"""The actor's face template: MediaPipe FaceMesh landmarks of a real photo, made into a closed, textured mesh.

The photo is scikit-image's ``astronaut`` (shipped inside the package, so nothing is downloaded). Its 468
FaceMesh landmarks become the template vertices, the FaceMesh tessellation its triangles and the photo its
texture. FaceMesh leaves the eyes and the mouth open; we close both with a fan around a new centre vertex, so
that eyelids can close over a textured eye and the mouth interior (teeth, tongue) is part of the dynamic
texture, as in the paper's capture. The mouth fan gets its own island in the texture (UV seams through
``uv_triangles``) because in the photo the mouth is nearly closed.

World frame (metres), the OpenCV habit used everywhere: x to the image right (the actor's left), y down,
z away from a frontal camera. The origin is about 9 cm behind the nose tip, the head's rotation centre.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Landmark indices of MediaPipe's canonical face mesh ("right" = the actor's right = image left).
INNER_LIP_LOOP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
UPPER_LIP = (191, 80, 81, 82, 13, 312, 311, 310, 415, 185, 40, 39, 37, 0, 267, 269, 270, 409)
LOWER_LIP = (324, 318, 402, 317, 14, 87, 178, 88, 95, 146, 91, 181, 84, 17, 314, 405, 321, 375)
MOUTH_CORNERS = {"right": (61, 78), "left": (291, 308)}
EYE_LOOPS = {
    "right": (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7),
    "left": (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249),
}
UPPER_LIDS = {"right": (246, 161, 160, 159, 158, 157, 173), "left": (466, 388, 387, 386, 385, 384, 398)}
LOWER_LIDS = {"right": (7, 163, 144, 145, 153, 154, 155), "left": (249, 390, 373, 374, 380, 381, 382)}
BROWS = {
    "right": (70, 63, 105, 66, 107, 46, 53, 52, 65, 55),
    "left": (300, 293, 334, 296, 336, 276, 283, 282, 295, 285),
}
INNER_BROWS = {"right": (107, 55, 66, 65), "left": (336, 285, 296, 295)}
CHEEKS = {"right": (205, 50, 187), "left": (425, 280, 411)}
NOSE_WINGS = {"right": 129, "left": 358}
NOSE_TIP, CHIN, FOREHEAD = 1, 152, 10
FACE_OVAL = (
    10,
    338,
    297,
    332,
    284,
    251,
    389,
    356,
    454,
    323,
    361,
    288,
    397,
    365,
    379,
    378,
    400,
    377,
    152,
    148,
    176,
    149,
    150,
    136,
    172,
    58,
    132,
    93,
    234,
    127,
    162,
    21,
    54,
    103,
    67,
    109,
)
NUM_LANDMARKS = 468
FACE_WIDTH_M = 0.145  # cheek-to-cheek width of the face oval, a typical adult's
ROTATION_CENTRE_BEHIND_NOSE_M = 0.09
MOUTH_ISLAND = (0.03, 0.03, 0.30, 0.17)  # u0, v0, u1, v1 of the mouth interior's texture island


def _tessellation_triangles(points_2d: np.ndarray) -> np.ndarray:
    """Triangles of FaceMesh's tessellation edge list (it lists edges, not faces).

    Every face is a 3-cycle of edges, but a few 3-cycles are not faces; those are the ones whose edges would
    otherwise be shared by three triangles, and each of them has another landmark inside it in 2D.
    """
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    edges = {tuple(sorted(e)) for e in FACEMESH_TESSELATION}
    neighbours: dict[int, set[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    cycles = {tuple(sorted((a, b, c))) for a, b in edges for c in neighbours[a] & neighbours[b]}

    def edge_counts(tris: set[tuple[int, int, int]]) -> Counter:
        return Counter(e for t in tris for e in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2])))

    def contains_a_landmark(tri: tuple[int, int, int]) -> bool:
        a, b, c = points_2d[list(tri)]
        others = np.delete(points_2d, list(tri), axis=0)

        def cross(u: np.ndarray, w: np.ndarray) -> np.ndarray:
            return u[0] * w[:, 1] - u[1] * w[:, 0]

        d1, d2, d3 = cross(b - a, others - a), cross(c - b, others - b), cross(a - c, others - c)
        inside = ((d1 > 0) & (d2 > 0) & (d3 > 0)) | ((d1 < 0) & (d2 < 0) & (d3 < 0))
        return bool(inside.any())

    counts = edge_counts(cycles)
    suspects = {t for t in cycles if any(counts[e] > 2 for e in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2])))}
    faces = cycles - {t for t in suspects if contains_a_landmark(t)}
    if max(edge_counts(faces).values()) > 2:
        raise RuntimeError("FaceMesh tessellation: could not resolve a non-manifold edge")
    return np.array(sorted(faces), dtype=np.int64)


def _orient_towards_camera(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Wind every triangle counter-clockwise seen from the frontal camera (normal towards -z)."""
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    normal_z = np.cross(b - a, c - a)[:, 2]
    flipped = triangles.copy()
    flipped[normal_z > 0] = flipped[normal_z > 0][:, [0, 2, 1]]
    return flipped


@dataclass(frozen=True)
class FacePhoto:
    """A face photo with its FaceMesh landmarks in pixels: ``landmarks (468, 3)``, z in pixel units."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    landmarks: np.ndarray  # (468, 3) float64: x, y in pixels; z relative depth scaled like x


def detect_landmarks(image: np.ndarray) -> np.ndarray | None:
    """FaceMesh's 468 landmarks of the largest face in ``image (H, W, 3) uint8 RGB``, in pixels; None if none."""
    import mediapipe as mp

    height, width = image.shape[:2]
    from avatar_lightning.quiet import native_stderr_filtered

    with native_stderr_filtered(), mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=False) as mesh:
        result = mesh.process(np.ascontiguousarray(image))
    if not result.multi_face_landmarks:
        return None
    points = np.array([[p.x, p.y, p.z] for p in result.multi_face_landmarks[0].landmark], dtype=np.float64)
    return points[:NUM_LANDMARKS] * np.array([width, height, width])


@lru_cache(maxsize=1)
def astronaut_photo() -> FacePhoto:
    """scikit-image's astronaut portrait and its landmarks (computed once per process)."""
    from skimage import data

    image = data.astronaut()
    landmarks = detect_landmarks(image)
    if landmarks is None:  # pragma: no cover - would mean a broken mediapipe install
        raise RuntimeError("MediaPipe FaceMesh found no face in skimage.data.astronaut(); check the mediapipe install")
    return FacePhoto(image=image, landmarks=landmarks)


@dataclass(frozen=True)
class FaceTemplate:
    """The closed face mesh in metres, with UVs into a square crop of the photo.

    Attributes:
        vertices: ``(V, 3)`` rest shape, V = 468 landmarks + 2 eye centres + 1 mouth centre.
        triangles: ``(F, 3)`` int64, counter-clockwise seen from the frontal camera.
        uvs: ``(V + 21, 2)`` in [0, 1]: per vertex, then the mouth island (inner lip loop, then centre).
        uv_triangles: ``(F, 3)`` indices into ``uvs``.
        crop: ``(x0, y0, size)`` of the photo crop the UVs address (pixels).
        eye_centres, mouth_centre: indices of the added vertices.
        mouth_triangles: ``(20,)`` indices into ``triangles`` of the mouth fan.
    """

    vertices: np.ndarray
    triangles: np.ndarray
    uvs: np.ndarray
    uv_triangles: np.ndarray
    crop: tuple[int, int, int]
    eye_centres: dict[str, int]
    mouth_centre: int
    mouth_triangles: np.ndarray


def build_face_template(photo: FacePhoto) -> FaceTemplate:
    """Landmarks -> metric vertices; tessellation + eye and mouth fans -> triangles; photo crop -> UVs."""
    return template_from_landmarks(photo.landmarks)


def template_from_landmarks(px: np.ndarray, topology: np.ndarray | None = None) -> FaceTemplate:
    """The template of any face from its 468 FaceMesh landmarks ``(468+, 3)``, frontal, in pixel-like units.

    The synthetic actor passes its photo's landmarks; ``prepare`` passes a real actor's neutral shape. The scale
    only sets the UV crop's rounding (use a face some hundred units wide); vertices are rescaled to metres.
    ``topology`` ``(468, 2)``: the 2-D landmarks that resolve FaceMesh's edge list into triangles (default
    ``px``); pass the astronaut's so every actor gets the synthetic actor's exact triangle list.
    """
    px = np.asarray(px, dtype=np.float64)[:NUM_LANDMARKS]
    topology = px[:, :2] if topology is None else np.asarray(topology, dtype=np.float64)[:NUM_LANDMARKS, :2]
    oval = px[list(FACE_OVAL)]
    scale = FACE_WIDTH_M / (oval[:, 0].max() - oval[:, 0].min())
    origin = np.array([oval[:, 0].mean(), px[NOSE_TIP, 1], px[NOSE_TIP, 2]])
    vertices = (px - origin) * scale
    vertices[:, 2] -= ROTATION_CENTRE_BEHIND_NOSE_M

    # Square crop around the face with a margin; UVs are the landmarks' pixel positions in it.
    lo, hi = px[:, :2].min(0), px[:, :2].max(0)
    size = int(np.ceil(1.5 * (hi - lo).max()))
    centre = (lo + hi) / 2
    x0, y0 = (int(round(c - size / 2)) for c in centre)
    uvs = (px[:, :2] - np.array([x0, y0])) / size

    triangles = [_tessellation_triangles(topology)]
    vertices_list, uv_list = [vertices], [uvs]
    next_index = NUM_LANDMARKS
    eye_centres = {}
    for side, loop in EYE_LOOPS.items():
        loop_idx = np.array(loop)
        centre_v = vertices[loop_idx].mean(0) + np.array([0.0, 0.0, 0.002])  # slightly sunken eyeball
        vertices_list.append(centre_v[None])
        uv_list.append(uvs[loop_idx].mean(0, keepdims=True))
        triangles.append(np.stack([loop_idx, np.roll(loop_idx, -1), np.full_like(loop_idx, next_index)], 1))
        eye_centres[side] = next_index
        next_index += 1
    loop_idx = np.array(INNER_LIP_LOOP)
    mouth_centre = next_index
    vertices_list.append((vertices[loop_idx].mean(0) + np.array([0.0, 0.0, 0.012]))[None])  # a cavity
    uv_list.append(uvs[loop_idx].mean(0, keepdims=True))
    mouth = np.stack([loop_idx, np.roll(loop_idx, -1), np.full_like(loop_idx, mouth_centre)], 1)
    triangles.append(mouth)

    vertices = np.concatenate(vertices_list)
    faces = _orient_towards_camera(vertices, np.concatenate(triangles))
    num_faces = len(faces)
    mouth_triangles = np.arange(num_faces - len(mouth), num_faces)

    # The mouth fan's UVs: a separate island laid out like an opened mouth (a wide ellipse).
    uvs_all = np.concatenate(uv_list)
    island_uv_index = {int(v): len(uvs_all) + i for i, v in enumerate(INNER_LIP_LOOP)}
    island_uv_index[mouth_centre] = len(uvs_all) + len(INNER_LIP_LOOP)
    angles = np.linspace(np.pi, -np.pi, len(INNER_LIP_LOOP), endpoint=False)  # from the right corner, upper lip first
    u0, v0, u1, v1 = MOUTH_ISLAND
    ring = np.stack(
        [(u0 + u1) / 2 + (u1 - u0) / 2 * 0.98 * np.cos(angles), (v0 + v1) / 2 - (v1 - v0) / 2 * 0.98 * np.sin(angles)],
        1,
    )
    island = np.concatenate([ring, [[(u0 + u1) / 2, (v0 + v1) / 2]]])
    uvs_all = np.concatenate([uvs_all, island])
    uv_triangles = faces.copy()
    uv_triangles[mouth_triangles] = np.vectorize(island_uv_index.__getitem__)(faces[mouth_triangles])
    return FaceTemplate(
        vertices=vertices.astype(np.float32),
        triangles=faces,
        uvs=uvs_all.astype(np.float32),
        uv_triangles=uv_triangles,
        crop=(x0, y0, size),
        eye_centres=eye_centres,
        mouth_centre=mouth_centre,
        mouth_triangles=mouth_triangles,
    )
