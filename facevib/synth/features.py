"""Facial features of a synthetic head: eyes, brows, mouth, nostrils, glasses, face mask.

Each feature is an outline in face coordinates (x, y), lifted onto the face surface and
projected by the photo's camera, then filled with cv2 (anti-aliased, 1/16-pixel vertex
precision) on the albedo of the head's region. Lifting before projecting is what makes
features foreshorten and shift with the pose the way the head does. A feature whose
anchor turns away from the camera is not drawn.
"""

from __future__ import annotations

import cv2
import numpy as np

from facevib.synth.geometry import Camera, Head

__all__ = ["Painter", "draw_features", "mouth_corners", "eye_centres"]

_SHIFT = 4
_ONE = 1 << _SHIFT
_EYE_T = np.linspace(0.0, np.pi, 9)
_CIRCLE_T = np.linspace(0.0, 2 * np.pi, 16, endpoint=False)
_CIRCLE = np.column_stack([np.cos(_CIRCLE_T), np.sin(_CIRCLE_T)])


def _colour(value) -> tuple[float, ...]:
    return tuple(min(255.0, max(0.0, float(v))) for v in value)


class Painter:
    """Draws projected 3-D outlines on ``albedo`` (uint8, the head region at ``origin``)."""

    def __init__(self, albedo: np.ndarray, origin: np.ndarray, head: Head, cam: Camera):
        self.albedo, self.origin, self.head, self.cam = albedo, origin, head, cam
        self.px = max(1.0, cam.scale / 90.0)  # a line width that follows the face size

    def _fixed(self, points3d: np.ndarray) -> np.ndarray:
        return np.round((self.cam.project(points3d) - self.origin) * _ONE).astype(np.int32)

    def fill(self, points3d: np.ndarray, colour) -> None:
        cv2.fillPoly(self.albedo, [self._fixed(points3d)], _colour(colour), cv2.LINE_AA, _SHIFT)

    def line(self, points3d: np.ndarray, colour, thickness: int, closed: bool = False) -> None:
        cv2.polylines(self.albedo, [self._fixed(points3d)], closed, _colour(colour), thickness, cv2.LINE_AA, _SHIFT)

    def clipped_fills(self, clip: np.ndarray, fills: list[tuple[np.ndarray, tuple]]) -> None:
        """Fill each ``(outline, colour)`` but keep only what falls inside ``clip`` (an iris
        inside the lids), blending the clip's anti-aliased edge."""
        outline = self._fixed(clip)
        x0, y0 = np.maximum(outline.min(axis=0) // _ONE - 1, 0)
        x1, y1 = np.minimum(outline.max(axis=0) // _ONE + 2, self.albedo.shape[1::-1])
        if x1 <= x0 or y1 <= y0:
            return
        offset = np.array([x0, y0]) * _ONE
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, [outline - offset], 255, cv2.LINE_AA, _SHIFT)
        region = self.albedo[y0:y1, x0:x1]
        layer = region.copy()
        for points3d, colour in fills:
            cv2.fillPoly(layer, [self._fixed(points3d) - offset], _colour(colour), cv2.LINE_AA, _SHIFT)
        alpha = mask[..., None].astype(np.float32) / 255.0
        region[:] = (layer * alpha + region * (1.0 - alpha)).astype(np.uint8)


def eye_centres(head: Head) -> np.ndarray:
    """Canonical 3-D centres of the (image-)left and right eyes."""
    ident = head.ident
    return head.lift(np.array([[-ident.eye_x, ident.eye_y], [ident.eye_x, ident.eye_y]]), -0.01)


def _mouth_shape(head: Head) -> tuple[float, float]:
    ident, cond = head.ident, head.cond
    width = ident.mouth_w * (1.0 + 0.15 * cond.smile - 0.1 * cond.mouth_open)
    return width, ident.mouth_y - 0.045 * cond.smile


def mouth_corners(head: Head) -> np.ndarray:
    """Canonical 3-D (image-)left and right mouth corners for the photo's expression."""
    width, corner_y = _mouth_shape(head)
    return head.lift(np.array([[-width, corner_y], [width, corner_y]]), 0.004)


def _eye(paint: Painter, side: int) -> None:
    head, ident, cond = paint.head, paint.head.ident, paint.head.cond
    if paint.cam.facing(np.array([side * 0.45, 0.0, 1.0])) < 0.12:
        return
    centre = np.array([side * ident.eye_x, ident.eye_y])
    up = ident.eye_h * (1.0 - 0.65 * cond.squint) * (1.0 + 0.1 * cond.brow_raise)
    down = ident.eye_h * 0.75 * (1.0 - 0.3 * cond.squint)
    cos_t, sin_t = np.cos(_EYE_T), np.sin(_EYE_T)
    outline = np.concatenate(
        [np.column_stack([ident.eye_w * cos_t, -up * sin_t]), np.column_stack([-ident.eye_w * cos_t, down * sin_t])]
    )
    tilt = -side * ident.eye_tilt
    turn = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
    outline = outline @ turn.T + centre
    lids = head.lift(outline)
    iris_r = ident.eye_h * 0.95
    iris_c = centre + cond.gaze * np.array([ident.eye_w * 0.35, ident.eye_h * 0.2])
    iris = head.lift(np.concatenate([iris_c + iris_r * _CIRCLE, iris_c + 0.45 * iris_r * _CIRCLE]), -0.005)
    white = tuple(np.array([238.0, 232.0, 224.0]) * (1.0 - 0.08 * head.age))
    # The iris and pupil are clipped to the lids: a squint hides part of them.
    paint.clipped_fills(
        lids, [(lids, white), (iris[: len(_CIRCLE)], ident.iris_colour), (iris[len(_CIRCLE) :], (12, 10, 10))]
    )
    lid = max(1, int(round(paint.px * 1.4)))
    paint.line(lids[: len(_EYE_T)], (30, 22, 20), lid)
    paint.line(lids[len(_EYE_T) :], ident.skin_colour * 0.72, max(1, lid - 1))


def _brow(paint: Painter, side: int) -> None:
    head, ident, cond = paint.head, paint.head.ident, paint.head.cond
    if paint.cam.facing(np.array([side * 0.5, -0.4, 1.0])) < 0.1:
        return
    t = np.linspace(0.0, 1.0, 7)
    x = side * (ident.eye_x - 0.45 * ident.brow_len + ident.brow_len * t)
    y = ident.eye_y - ident.brow_gap - 0.05 * cond.brow_raise - ident.brow_arch * np.sin(np.pi * t)
    y = y - ident.brow_slant * (t - 0.5)
    thick = ident.brow_thick * (1.0 - 0.5 * t)
    outline = np.concatenate([np.column_stack([x, y - thick]), np.column_stack([x, y])[::-1]])
    colour = ident.brow_colour + (200 - ident.brow_colour) * 0.4 * max(head.age - 0.6, 0)
    paint.fill(head.lift(outline, 0.005), colour)


def _mouth(paint: Painter) -> None:
    head, ident, cond = paint.head, paint.head.ident, paint.head.cond
    if paint.cam.facing(np.array([0.0, 0.3, 1.0])) < 0.05:
        return
    width, corner_y = _mouth_shape(head)
    x = np.linspace(-width, width, 11)
    rel = x / width
    arc = np.sqrt(np.clip(1 - rel**2, 0, 1))
    line = corner_y + (ident.mouth_y - corner_y) * (1 - rel**2)  # where the lips meet; curves up in a smile
    gap = 0.09 * cond.mouth_open * arc
    bow = ident.lip_upper * (0.75 + 0.25 * np.cos(np.pi * rel * 2.2)) * arc  # cupid's bow
    upper_top = np.column_stack([x, line - bow - 0.004])
    upper_low = np.column_stack([x, line])
    lower_top = np.column_stack([x, line + gap])
    lower_bot = np.column_stack([x, line + gap + ident.lip_lower * arc + 0.004])
    n = len(x)
    lifted = head.lift(np.concatenate([upper_top, upper_low, lower_top, lower_bot]), 0.004)
    upper_top, upper_low, lower_top, lower_bot = (lifted[k * n : (k + 1) * n] for k in range(4))
    if cond.mouth_open > 0.05:
        paint.fill(np.concatenate([upper_low, lower_top[::-1]]), (45, 18, 20))
        teeth = head.lift(np.column_stack([x[2:-2], line[2:-2] + 0.45 * gap[2:-2]]), 0.004)
        paint.fill(np.concatenate([upper_low[2:-2], teeth[::-1]]), (225, 220, 205))
    paint.fill(np.concatenate([upper_top, upper_low[::-1]]), ident.lip_colour)
    paint.fill(np.concatenate([lower_top, lower_bot[::-1]]), ident.lip_colour * 1.06)


def _nostrils(paint: Painter) -> None:
    head, ident = paint.head, paint.head.ident
    if paint.cam.facing(np.array([0.0, 0.6, 1.0])) < 0.15:
        return
    z = head.ala.centre[2] + head.ala.axes[2] * 0.55
    for side in (-1, 1):
        centre = np.array([side * ident.ala_width * 0.45, ident.nose_tip_y + 0.045])
        outline = centre + _CIRCLE * np.array([0.028, 0.013])
        paint.fill(np.column_stack([outline, np.full(len(outline), z)]), ident.skin_colour * 0.35)


def _glasses(paint: Painter, sunglasses: bool) -> None:
    head, ident = paint.head, paint.head.ident
    half = np.array([0.16, 0.11]) if sunglasses else ident.glasses_size
    colour = np.array([20.0, 20.0, 22.0]) if sunglasses else ident.glasses_colour
    thick = max(1, int(round(paint.cam.scale * ident.glasses_thick)))
    shape = _CIRCLE
    if ident.glasses == 2 and not sunglasses:  # rectangular frames: push the circle toward a box
        shape = np.sign(_CIRCLE) * np.abs(_CIRCLE) ** 0.45
    rims = []
    for side in (-1, 1):
        centre = np.array([side * ident.eye_x, ident.eye_y + 0.01])
        z = head.surface_z(centre[:1], centre[1:])[0] + 0.09
        rim = np.column_stack([centre + shape * half, np.full(len(shape), z)])
        rims.append(rim)
        if sunglasses:
            paint.fill(rim, (28, 30, 34))
        paint.line(rim, colour, thick, closed=True)
        if paint.cam.facing(np.array([side, 0.0, 0.2])) > 0:  # the temple toward the camera
            arm = np.array(
                [
                    [side * (ident.eye_x + half[0]), ident.eye_y, z],
                    [side * ident.head_axes[0], ident.eye_y + 0.05, -0.1],
                ]
            )
            paint.line(arm, colour, thick)
    bridge = np.array([rims[0][0], rims[1][len(shape) // 2]])
    bridge[:, 2] += 0.02
    paint.line(bridge, colour, thick)


def _face_mask(paint: Painter, rng: np.random.Generator) -> None:
    head, ident = paint.head, paint.head.ident
    top = (ident.eye_y + ident.nose_tip_y) / 2 + 0.03
    bottom = ident.jaw_centre[1] + ident.jaw_axes[1] * 0.92
    xs = np.linspace(-1, 1, 9)
    width = ident.head_axes[0] * 0.9
    upper = np.column_stack([xs * width, top + 0.06 * xs**2])
    lower = np.column_stack([xs[::-1] * width * 0.85, bottom - 0.3 * (xs[::-1] * 0.85) ** 2])
    colours = ([170, 200, 225], [235, 235, 235], [30, 30, 35], [120, 150, 120])
    paint.fill(head.lift(np.concatenate([upper, lower]), 0.03), colours[int(rng.integers(len(colours)))])


def draw_features(paint: Painter, restore: np.ndarray, plain: np.ndarray) -> None:
    """Draw all features. Pixels flagged in ``restore`` (hair, nose, ears) get their
    ``plain`` albedo back after the face features, since those surfaces lie in front of the
    face surface the features were drawn on; nostrils, mask and glasses come after that."""
    for side in (-1, 1):
        _eye(paint, side)
        _brow(paint, side)
    _mouth(paint)
    paint.albedo[restore] = plain[restore]
    _nostrils(paint)
    cond = paint.head.cond
    if cond.occlusion == "mask":
        _face_mask(paint, np.random.default_rng(cond.occlusion_seed))
    if cond.wear_glasses or cond.occlusion == "sunglasses":
        _glasses(paint, sunglasses=cond.occlusion == "sunglasses")
