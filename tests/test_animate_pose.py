"""``animate --pose driving`` and ``--orbit``: known rotations in, projected landmark positions out.

Conventions (avatar_lightning/render/cameras.py): camera x right, y down, z forward; pixels u right, v down. An
in-plane turn that looks counter-clockwise on screen is therefore a *negative* rotation about the camera's z
axis. Every expectation below is computed here from the known rotation (numpy/scipy on camera-frame points),
never by calling the code under test; the code under test is ``AvatarRenderer.driven_pose`` and
``orbit_cameras``, followed by ``Mesh.deform`` and the renderer's camera projection.

Each test was checked against injected bugs in ``stages/animate.py`` (its docstring names which ones it
catches): the rotation transposed in ``driven_pose`` (``R`` for ``R^T``), rotations ignored (a frozen pose), the
camera conjugation dropped or reversed, the default pose composed on the wrong side, and the orbit angle's sign
flipped or its phase moved.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from avatar_lightning.avatar import Avatar, load_avatar
from avatar_lightning.avatar.renderer import ORBIT_DEGREES, ORBIT_SECONDS, AvatarRenderer, orbit_cameras
from avatar_lightning.features.head_pose import HeadRotationTracker
from avatar_lightning.synth.face import CHIN, EYE_LOOPS, FOREHEAD, NOSE_TIP
from tests.features_fixtures import face_image, rotate_scale

RIGHT_EYE_OUTER, LEFT_EYE_OUTER = EYE_LOOPS["right"][0], EYE_LOOPS["left"][0]  # 33 (image left), 263 (image right)
CAMERAS = ("frontal", "diagonal_left", "diagonal_right")  # the tiny synthetic rig: 0 and +-30 degrees of yaw


@pytest.fixture(scope="module")
def avatar(avatar_dir: Path) -> Avatar:
    return load_avatar(avatar_dir)


def camera_rotation(yaw: float = 0.0, pitch: float = 0.0, screen_roll: float = 0.0) -> np.ndarray:
    """A driver's head rotation in camera coordinates (degrees): ``yaw`` about the camera's y (down) axis,
    ``pitch`` about its x axis, and an in-plane turn that looks ``screen_roll`` degrees counter-clockwise in the
    image (a rotation of ``-screen_roll`` about the camera's z axis, since y points down)."""
    return Rotation.from_rotvec(np.deg2rad([pitch, yaw, -screen_roll])).as_matrix()


def screen_angle(pixels: np.ndarray, a: int, b: int) -> np.ndarray:
    """Counter-clockwise angle on screen (degrees) of the line from landmark ``a`` to ``b``; ``pixels (..., V, 2)``."""
    d = pixels[..., b, :] - pixels[..., a, :]
    return np.degrees(np.arctan2(-d[..., 1], d[..., 0]))  # v grows downwards


def wrap(degrees: np.ndarray) -> np.ndarray:
    return (np.asarray(degrees) + 180.0) % 360.0 - 180.0


def rendered_landmarks(renderer: AvatarRenderer, poses: torch.Tensor) -> np.ndarray:
    """The code path of ``AvatarRenderer.render``: rest blend shapes, posed by ``poses (B, 6)``, projected through
    the renderer's capture camera: pixels ``(B, V, 2)``."""
    mesh = renderer.avatar.mesh
    vertices = mesh.deform(torch.zeros(len(poses), mesh.num_blend_shapes), poses)
    pixels, depth = renderer.camera.project_to_pixels(vertices)
    assert bool((depth > 0).all())
    return pixels.double().numpy()


def driver_image_shift(rotation: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """How a head point at ``offset`` (metres, camera frame) from the head's centre, 1 m in front of a pinhole
    camera, moves in the driver's image (in focal-length units) when the head turns by ``rotation``."""
    centre = np.array([0.0, 0.0, 1.0])
    before, after = centre + offset, centre + rotation @ offset
    return after[:2] / after[2] - before[:2] / before[2]


@pytest.mark.parametrize("camera", CAMERAS)
def test_driven_pose_rotates_the_head_by_the_drivers_rotation_in_the_cameras_frame(avatar: Avatar,
                                                                                   camera: str) -> None:
    """Exact: a driver rotation R (camera frame) turns every projected vertex as R about the head's centre in
    the avatar's camera frame, from every capture camera. Catches R^T for R, a frozen pose, a missing or reversed
    camera conjugation (R_c R R_c^T, or R used as a world rotation: the diagonal cameras) and the default pose
    composed on the wrong side (default * driven)."""
    renderer = AvatarRenderer(avatar, camera)
    rotation = camera_rotation(yaw=15.0, pitch=-6.0, screen_roll=10.0)
    pixels = rendered_landmarks(renderer, renderer.driven_pose(rotation[None]))[0]

    record = renderer.record
    K, R_c, t_c = (np.asarray(x, dtype=np.float64) for x in (record.K, record.R, record.t))
    default = renderer.pose.double().numpy()
    rest = avatar.mesh.vertices.double().numpy()
    posed = Rotation.from_rotvec(default[:3]).apply(rest) + default[3:]  # the avatar at its default pose, world
    in_camera = posed @ R_c.T + t_c
    centre = R_c @ default[3:] + t_c  # the head's rotation centre (the template's origin) in the camera frame
    turned = (in_camera - centre) @ rotation.T + centre
    expected = (turned @ K.T)[:, :2] / turned[:, 2:]
    np.testing.assert_allclose(pixels, expected, atol=0.02)
    assert np.abs(pixels - rendered_landmarks(renderer, renderer.pose[None])[0]).max() > 3.0  # it did move


@pytest.mark.parametrize("camera", CAMERAS)
@pytest.mark.parametrize("roll", [20.0, -12.0])
def test_a_drivers_in_plane_turn_turns_the_avatars_face_alike(avatar: Avatar, camera: str, roll: float) -> None:
    """A driver's head turned in the image plane by ``roll`` degrees (counter-clockwise on screen) turns the
    avatar's projected eye line and forehead-chin line by the same angle, same sign, in the avatar's image.
    Catches R^T for R (the turn comes out mirrored), a frozen pose, and a camera conjugation that rolls about
    world z instead of the view axis (the diagonal cameras)."""
    rotation = camera_rotation(screen_roll=roll)
    # The driver's side, from the rotation alone: a horizontal eye line 1 m in front of a pinhole camera.
    eyes = np.array([[-0.05, 0.0, 1.0], [0.05, 0.0, 1.0]]) @ rotation.T
    driver_turn = np.degrees(np.arctan2(-(eyes[1, 1] / eyes[1, 2] - eyes[0, 1] / eyes[0, 2]),
                                        eyes[1, 0] / eyes[1, 2] - eyes[0, 0] / eyes[0, 2]))
    assert driver_turn == pytest.approx(roll, abs=1e-6)  # the convention of camera_rotation, checked

    renderer = AvatarRenderer(avatar, camera)
    still, turned = rendered_landmarks(renderer, torch.cat([renderer.pose[None], renderer.driven_pose(rotation[None])]))
    for a, b in ((RIGHT_EYE_OUTER, LEFT_EYE_OUTER), (FOREHEAD, CHIN)):
        avatar_turn = wrap(screen_angle(turned, a, b) - screen_angle(still, a, b))
        assert avatar_turn == pytest.approx(driver_turn, abs=1.0), (camera, a, b, avatar_turn)


@pytest.mark.parametrize("camera", CAMERAS)
@pytest.mark.parametrize(("yaw", "pitch"), [(15.0, 0.0), (-15.0, 0.0), (0.0, 12.0), (0.0, -12.0)])
def test_a_drivers_yaw_or_pitch_moves_the_avatars_nose_tip_the_same_way(avatar: Avatar, camera: str, yaw: float,
                                                                        pitch: float) -> None:
    """A driver's yaw (pitch) moves the avatar's projected nose tip horizontally (vertically) toward the same image
    side as the driver's own nose tip moves, by a comparable share of the face. Catches R^T for R (the nose goes
    the other way) and a frozen pose (it stays)."""
    rotation = camera_rotation(yaw=yaw, pitch=pitch)
    nose = np.array([0.0, 0.0, -0.09])  # the driver's nose tip, 9 cm in front of the head's centre
    driver = driver_image_shift(rotation, nose)
    axis = 0 if yaw else 1  # yaw: u (right), pitch: v (down)
    assert abs(driver[axis]) > 0.015 and abs(driver[1 - axis]) < 1e-3
    # The expected side, spelled out: a positive yaw about y-down swings the nose to the image left, a positive
    # pitch about x-right swings it down.
    assert np.sign(driver[axis]) == (-np.sign(yaw) if yaw else np.sign(pitch))

    renderer = AvatarRenderer(avatar, camera)
    still, turned = rendered_landmarks(renderer, torch.cat([renderer.pose[None], renderer.driven_pose(rotation[None])]))
    shift = turned[NOSE_TIP] - still[NOSE_TIP]
    focal = float(renderer.record.K[0][0])
    assert np.sign(shift[axis]) == np.sign(driver[axis]), (camera, shift, driver)
    assert abs(shift[axis]) > 0.5 * focal * abs(driver[axis]), (camera, shift, driver * focal)


def test_an_in_plane_turn_of_a_driving_photo_turns_the_avatars_face_alike(avatar: Avatar) -> None:
    """End to end: a face photo turned in-plane by known angles (cv2, counter-clockwise on screen for positive
    angles) -> HeadRotationTracker -> driven_pose -> deformed, projected mesh: the avatar's eye line turns by the
    photo's angle with the same sign, from every capture camera. Catches R^T for R (mirrored turn) and a frozen pose
    anywhere between the tracker and the projected mesh."""
    face = face_image(192)
    # cv2's positive angle is counter-clockwise on screen: a point right of the centre moves up (smaller row).
    matrix = cv2.getRotationMatrix2D((96.0, 96.0), 10.0, 1.0)
    assert (matrix @ [146.0, 96.0, 1.0])[1] < 96.0 - 5.0
    holds = [0.0, 12.0, -10.0]
    frames = np.stack([rotate_scale(face, angle, 1.0) for angle in holds for _ in range(3)])
    tracker = HeadRotationTracker(smoothing=0.0)
    try:
        rotations = tracker(frames)
    finally:
        tracker.close()
    assert tracker.frames_without_face == 0
    for camera in CAMERAS:
        renderer = AvatarRenderer(avatar, camera)
        pixels = rendered_landmarks(renderer, renderer.driven_pose(rotations))
        turns = wrap(screen_angle(pixels, RIGHT_EYE_OUTER, LEFT_EYE_OUTER) - screen_angle(pixels[0], RIGHT_EYE_OUTER,
                                                                                         LEFT_EYE_OUTER))
        settled = turns[2::3]  # the last frame of each hold
        np.testing.assert_allclose(settled, holds, atol=3.0, err_msg=f"{camera}: {turns}")


def orbit_frames(fps: float) -> list[int]:
    """Frame 0 and the quarter, half and three-quarter points of one orbit period (sin = 0, 1, 0, -1)."""
    quarter = ORBIT_SECONDS * fps / 4
    assert quarter == int(quarter)
    return [0, int(quarter), int(2 * quarter), int(3 * quarter)]


@pytest.mark.parametrize("camera", CAMERAS)
def test_orbit_swings_plus_30_degrees_about_world_y_at_a_quarter_period(avatar: Avatar, camera: str) -> None:
    """Phase and direction: at frame 0 and half a period the view is the capture camera's; at a quarter period its
    eye is the start eye turned by +30 degrees about the vertical (world y, down) axis through the head's centre, at
    three quarters by -30 degrees. From the frontal camera +30 degrees moves the eye toward world -x (the actor's
    right, the frontal image's left). Catches a flipped orbit sign and a shifted phase (cos for sin)."""
    record = avatar.camera(camera)
    renderer = AvatarRenderer(avatar, camera)
    centre = renderer.pose[3:].double().numpy()  # render() orbits about the pose's translation
    fps = 25.0
    cams = orbit_cameras(record, renderer.pose[3:], orbit_frames(fps), fps)
    eyes = cams.centers.double().numpy()
    start = -np.asarray(record.R, dtype=np.float64).T @ np.asarray(record.t, dtype=np.float64)
    for eye, degrees in zip(eyes, [0.0, ORBIT_DEGREES, 0.0, -ORBIT_DEGREES], strict=True):
        expected = Rotation.from_rotvec([0.0, np.deg2rad(degrees), 0.0]).apply(start - centre) + centre
        np.testing.assert_allclose(eye, expected, atol=1e-4, err_msg=f"{camera} at {degrees} degrees")
    if camera == "frontal":
        assert eyes[1, 0] < start[0] - 0.4 and eyes[3, 0] > start[0] + 0.4  # +30: toward world -x, -30: toward +x


def test_orbit_at_a_quarter_period_shows_the_face_turned_toward_image_right(avatar: Avatar) -> None:
    """From the frontal camera, at a quarter period (+30 degrees, the eye moved toward the actor's right) the
    avatar's projected nose tip has moved toward the image right relative to the head's projected centre, by about
    focal * 9 cm * sin 30; at three quarters toward the left. Catches a flipped orbit sign or shifted phase in what
    the rendered image shows."""
    renderer = AvatarRenderer(avatar, "frontal")
    fps = 25.0
    cams = orbit_cameras(renderer.record, renderer.pose[3:], orbit_frames(fps), fps)
    mesh = avatar.mesh
    vertices = mesh.deform(torch.zeros(1, mesh.num_blend_shapes), renderer.pose[None])
    points = torch.cat([vertices, renderer.pose[None, None, 3:]], 1)  # the mesh and the head's centre
    pixels, _ = cams.project_to_pixels(points)
    nose = (pixels[:, NOSE_TIP, 0] - pixels[:, -1, 0]).double().numpy()  # nose tip right of the centre, pixels
    relative = nose - nose[0]
    expected = float(renderer.record.K[0][0]) * 0.09 * np.sin(np.deg2rad(ORBIT_DEGREES))  # about 7.6 px
    assert relative[1] > 0.5 * expected and relative[3] < -0.5 * expected, relative
    assert abs(relative[2]) < 0.05, relative
