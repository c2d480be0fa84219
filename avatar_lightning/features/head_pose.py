"""The driving person's head rotation, relative to their first frame with a face, from FaceMesh landmarks.

The similarity that maps a frame's rigid landmarks (forehead, nose bridge, eye corners: the ones expressions do
not move) onto the first face frame's is that frame's head rotation, inverted. MediaPipe's coordinates are the
camera's (x right, y down, z away), so the rotation is in camera coordinates; ``animate`` turns it into a world
rotation of the avatar seen from its capture camera. Frames without a face hold the last rotation.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from avatar_lightning.features.mediapipe_landmarks import FaceMeshTracker, similarity_transform


class HeadRotationTracker:
    """Feed frames in order; get each frame's head rotation ``(3, 3)`` relative to the first face frame.

    Args:
        smoothing: exponential smoothing of the rotation over frames (0: none), against landmark jitter.
    """

    def __init__(self, smoothing: float = 0.5) -> None:
        if not 0 <= smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.tracker = FaceMeshTracker(static=False)
        self.smoothing = smoothing
        self.reference: np.ndarray | None = None
        self.current = Rotation.identity()
        self.frames_without_face = 0

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``frames (B, H, W, 3) uint8`` -> rotations ``(B, 3, 3)`` in camera coordinates."""
        out = np.empty((len(frames), 3, 3))
        for i, image in enumerate(frames):
            points = self.tracker(image)
            if points is None:
                self.frames_without_face += 1
            elif self.reference is None:
                self.reference = points
            else:
                _, to_reference, _, _ = similarity_transform(points[None], self.reference)
                measured = Rotation.from_matrix(to_reference[0].T)  # the head's rotation since the reference
                delta = (measured * self.current.inv()).as_rotvec() * (1 - self.smoothing)
                self.current = Rotation.from_rotvec(delta) * self.current
            out[i] = self.current.as_matrix()
        return out

    def close(self) -> None:
        self.tracker.close()
