"""Geometry of a synthetic head: ellipsoids in a canonical frame, a weak-perspective
camera, and a z-buffered ray cast that gives every head pixel its surface, 3-D point and
normal.

The head is a union of ellipsoids (cranium, jaw, nose, nostril wings, ears, neck), a hair
shell around the cranium whose hair-covered part follows the identity's hairline, a hair
curtain behind the head for long hair, and a hat shell when the photo has a hat. A ray
meets an ellipsoid where a quadratic in its depth has a root, so the whole cast is a few
numpy operations per ellipsoid over its bounding box, and normals and points are computed
once, afterwards, for the winning surface of each pixel.

Canonical frame: x to the image right, y down, z toward the camera (see facevib.synth.params).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facevib.synth.params import Conditions, Identity

__all__ = ["SKIN", "NOSE", "EAR", "NECK", "HAIR", "CURTAIN", "HAT", "Camera", "Head", "Raster", "raycast"]

# Surface kinds (small ints so that per-pixel masks are cheap comparisons).
SKIN, NOSE, EAR, NECK, HAIR, CURTAIN, HAT = range(7)
_SHELLS = (HAIR, CURTAIN, HAT)
_EYE = np.eye(3)
_EYE.flags.writeable = False


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-from-canonical rotation: roll (image plane) after yaw after pitch."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _tilt_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _turn_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


class Camera:
    """Weak-perspective camera: image = scale * (R p)[:2] + centre, in crop pixels."""

    def __init__(self, rot: np.ndarray, scale: float, centre: np.ndarray):
        self.rot, self.scale, self.centre = rot, float(scale), np.asarray(centre, np.float64)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Canonical ``(N, 3)`` points -> image ``(N, 2)``."""
        return (points @ self.rot.T)[:, :2] * self.scale + self.centre

    def facing(self, normal: np.ndarray) -> float:
        """Camera-frame z of a canonical direction, normalised (> 0: turned toward the camera)."""
        n = self.rot @ normal
        return float(n[2] / (np.linalg.norm(n) + 1e-12))


class Ellipsoid:
    """``frame`` maps the ellipsoid's own axes to canonical ones (identity: axis-aligned)."""

    def __init__(self, centre, axes, kind: int, frame: np.ndarray | None = None):
        self.centre = np.asarray(centre, np.float64)
        self.axes = np.asarray(axes, np.float64)
        self.kind = kind
        self.frame = _EYE if frame is None else frame

    def front_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Canonical z of the front surface above (x, y) for an axis-aligned ellipsoid; off
        the ellipsoid, the z of its centre (so a union of ellipsoids degrades gracefully)."""
        a, b, c = self.axes
        inside = 1.0 - ((x - self.centre[0]) / a) ** 2 - ((y - self.centre[1]) / b) ** 2
        return self.centre[2] + c * np.sqrt(np.maximum(inside, 0.0))

    def extreme(self, direction: np.ndarray) -> np.ndarray:
        """The surface point furthest along ``direction`` (M d / sqrt(d^T M d), M = F A^2 F^T)."""
        m = self.frame @ np.diag(self.axes**2) @ self.frame.T
        return self.centre + m @ direction / np.sqrt(direction @ m @ direction)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


_NAPE = {"bald": 0.1, "buzz": 0.12, "short": 0.18, "medium": 0.5, "long": 0.95}


class Head:
    """An identity's head for one photo (age and expression applied), in canonical units."""

    def __init__(self, ident: Identity, cond: Conditions):
        self.ident, self.cond = ident, cond
        self.age = float(np.clip(ident.age + cond.age_shift, 0.0, 1.2))
        a, b, c = ident.head_axes
        self.cranium = Ellipsoid((0, ident.head_y, 0), (a, b, c), SKIN)
        jaw_axes = ident.jaw_axes * np.array([1.0 + 0.06 * self.age, 1.0 + 0.03 * self.age, 1.0])
        self.jaw = Ellipsoid(ident.jaw_centre + np.array([0, 0.03 * cond.mouth_open, 0]), jaw_axes, SKIN)
        zero = np.zeros(1)
        eye_z = self.surface_z(zero, np.array([ident.eye_y]))[0]
        tip_z = self.surface_z(zero, np.array([ident.nose_tip_y]))[0] + ident.nose_depth
        # The nose is an ellipsoid tilted so its lower end stands out most: its top meets the
        # brow, its most protruding point is the tip.
        length = (ident.nose_tip_y - ident.eye_y) * 0.6 + 0.04
        centre = np.array([0.0, ident.nose_tip_y - 0.75 * length, 0.5 * (eye_z + tip_z) - 0.02])
        self.nose = Ellipsoid(centre, (ident.nose_width, length, 0.11), NOSE, _tilt_x(ident.nose_tilt))
        self.nose_tip = self.nose.extreme(np.array([0.0, 0.35, 1.0]))
        ala_y = ident.nose_tip_y + 0.035
        ala_z = self.surface_z(zero, np.array([ala_y]))[0]
        self.ala = Ellipsoid((0, ala_y, ala_z), (ident.ala_width, 0.045, 0.07), NOSE)
        # Ears are flat discs turned outward, so that a frontal view shows them too.
        ear_axes = (0.04, 0.19 * ident.ear_size, 0.11 * ident.ear_size)
        self.ears = [Ellipsoid((s * a * 0.97, ident.ear_y, -0.08), ear_axes, EAR, _turn_y(-s * 0.55)) for s in (-1, 1)]
        self.neck = Ellipsoid((0, ident.jaw_centre[1] + 0.5, -0.2), (a * 0.66, 0.55, c * 0.6), NECK)
        vol = ident.hair_volume
        self.hair = Ellipsoid((0, ident.head_y - 0.02, -0.01), (a + vol, b + vol, c + vol), HAIR)
        self.curtain = None
        if ident.hair_style == "long":
            self.curtain = Ellipsoid((0, 0.5, -0.4), (a + vol + 0.1, 1.0, 0.42), CURTAIN)
        self.hat = Ellipsoid((0, ident.head_y - 0.03, 0), (a + vol + 0.05, b + vol + 0.05, c + vol + 0.05), HAT)

    def surface_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Front surface of the face (union of cranium and jaw) above canonical (x, y)."""
        return np.maximum(self.cranium.front_z(x, y), self.jaw.front_z(x, y))

    def lift(self, xy: np.ndarray, offset: float = 0.0) -> np.ndarray:
        """Put 2-D face points ``(N, 2)`` onto the face surface, ``offset`` toward the camera."""
        out = np.empty((len(xy), 3))
        out[:, :2] = xy
        out[:, 2] = self.surface_z(xy[:, 0], xy[:, 1]) + offset
        return out

    def shell_mask(self, kind: int, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Which canonical points of a shell carry material (hair style, curtain, hat)."""
        ident = self.ident
        if kind == CURTAIN:
            return y > ident.head_y - 0.2
        if kind == HAT:  # above the brows in front, a little higher at the back
            return y < ident.eye_y - ident.brow_gap - 0.12 - 0.3 * np.clip(-z, 0, 1)
        uz = (z - self.hair.centre[2]) / self.hair.axes[2]
        front = ident.hairline + ident.hair_part * x + ident.hair_temple * x * x
        if ident.fringe:
            front = front + ident.fringe * (0.6 + 0.4 * np.sin(28.0 * x + ident.fringe_phase))
        # The front hairline holds over the whole face side; nape length only behind the ears.
        weight = _smoothstep((uz + 0.35) / 0.5)
        hair = y < weight * front + (1.0 - weight) * _NAPE[ident.hair_style]
        if ident.hair_style == "bald":
            hair &= ~((y < -0.45) | (uz > 0.35))
        return hair

    def surfaces(self) -> list[Ellipsoid]:
        out = [self.cranium, self.jaw, self.nose, self.ala, *self.ears, self.neck, self.hair]
        if self.curtain is not None:
            out.append(self.curtain)
        if self.cond.occlusion == "hat":
            out.append(self.hat)
        return out


@dataclass
class Raster:
    """The ray cast of a head: region ``(y0, y1, x0, x1)`` of the crop; ``index`` (h, w) of
    the visible surface (-1: none); for the ``n`` covered pixels (row-major order) their
    coordinates ``ys, xs`` in the region, ``kind`` (n,), canonical ``point`` (3, n) and
    camera-frame unit ``normal`` (3, n), float32."""

    box: tuple[int, int, int, int]
    index: np.ndarray
    ys: np.ndarray
    xs: np.ndarray
    kind: np.ndarray
    point: np.ndarray
    normal: np.ndarray


def _bounds(ell: Ellipsoid, cam: Camera) -> tuple[int, int, int, int]:
    # Exact image extent of a projected ellipsoid: |row of R F diag(A)| per image axis.
    half = np.sqrt(((cam.rot @ ell.frame * ell.axes) ** 2).sum(axis=1))[:2] * cam.scale
    mid = (cam.rot @ ell.centre)[:2] * cam.scale + cam.centre
    lo, hi = np.floor(mid - half - 1).tolist(), np.ceil(mid + half + 2).tolist()
    return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])


def raycast(head: Head, cam: Camera, size: int) -> Raster:
    """Z-buffered orthographic ray cast of ``head`` over a ``size`` x ``size`` crop."""
    surfaces = head.surfaces()
    boxes = [_bounds(ell, cam) for ell in surfaces]  # (x0, y0, x1, y1) in whole pixels, unclipped
    x0 = min(max(min(b[0] for b in boxes), 0), size)
    y0 = min(max(min(b[1] for b in boxes), 0), size)
    x1 = max(min(max(b[2] for b in boxes), size), x0)
    y1 = max(min(max(b[3] for b in boxes), size), y0)
    h, w = max(y1 - y0, 0), max(x1 - x0, 0)
    depth = np.full((h, w), -np.inf, np.float32)
    index = np.full((h, w), -1, np.int8)
    face_depth = [np.full((h, w), -np.inf, np.float32) for _ in range(2)]
    r0, r1, d = cam.rot[0], cam.rot[1], cam.rot[2]
    rows = (r0.tolist(), r1.tolist(), d.tolist())  # python floats keep float32 arithmetic
    grid_x = ((np.arange(x0, x1, dtype=np.float32) - cam.centre[0]) / cam.scale)[None, :]
    grid_y = ((np.arange(y0, y1, dtype=np.float32) - cam.centre[1]) / cam.scale)[:, None]
    grid_xy = grid_y * grid_x
    for k, (ell, box) in enumerate(zip(surfaces, boxes, strict=True)):
        bx0, by0 = min(max(box[0], x0), x1), min(max(box[1], y0), y1)
        bx1, by1 = min(max(box[2], x0), x1), min(max(box[3], y0), y1)
        if bx1 <= bx0 or by1 <= by0:
            continue
        wx, wy = grid_x[:, bx0 - x0 : bx1 - x0], grid_y[by0 - y0 : by1 - y0]
        # Ray p(lam) = wx r0 + wy r1 + lam d. In the ellipsoid's unit-sphere frame
        # g = F^T (p - o) / A = wx g0 + wy g1 + g2 + lam gd, and |g|^2 = 1 is
        # alpha lam^2 + 2 beta lam + gamma = 0 with beta affine and gamma quadratic in (wx, wy).
        ft = ell.frame.T
        g0, g1 = ft @ r0 / ell.axes, ft @ r1 / ell.axes
        g2, gd = -(ft @ ell.centre) / ell.axes, ft @ d / ell.axes
        alpha = float(gd @ gd)
        beta = float(g0 @ gd) * wx + (float(g1 @ gd) * wy + float(g2 @ gd))
        gamma = (float(g0 @ g0) * wx + 2.0 * float(g0 @ g2)) * wx + (
            (float(g1 @ g1) * wy + 2.0 * float(g1 @ g2)) * wy + float(g2 @ g2 - 1.0)
        )
        gamma += (2.0 * float(g0 @ g1)) * grid_xy[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0]
        disc = beta * beta - alpha * gamma
        hit = disc > 0
        if not hit.any():
            continue
        root = np.sqrt(np.maximum(disc, 0))
        lam = (root - beta) / alpha  # the root nearer the camera (+z)
        sub = depth[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0]
        if ell.kind in _SHELLS:
            lam = _shell_depth(head, ell, lam, (-root - beta) / alpha, wx, wy, rows, hit, sub)
            hit = np.isfinite(lam)
        win = hit & (lam > sub)
        sub[win] = lam[win]
        index[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0][win] = k
        if k < 2:  # cranium and jaw: keep both depths to blend their normals at the seam
            face_depth[k][by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] = np.where(hit, lam, np.float32(-np.inf))
    ys, xs = np.nonzero(index >= 0)
    which = index[ys, xs].astype(np.intp)
    lam = depth[ys, xs]
    wx = (xs + (x0 - cam.centre[0])).astype(np.float32) / cam.scale
    wy = (ys + (y0 - cam.centre[1])).astype(np.float32) / cam.scale
    r0, r1, d = cam.rot[0].tolist(), cam.rot[1].tolist(), cam.rot[2].tolist()
    # Columns, not (n, 3) matmuls: numpy is much faster on long 1-D float32 arrays.
    point = np.stack([wx * r0[i] + wy * r1[i] + lam * d[i] for i in range(3)])
    centres = np.array([ell.centre for ell in surfaces], np.float32).T[:, which]
    inv_sq = np.array([1.0 / ell.axes**2 for ell in surfaces], np.float32).T[:, which]
    grad = (point - centres) * inv_sq  # gradient of the ellipsoid's implicit function
    for k, ell in enumerate(surfaces):
        if ell.frame is not _EYE:
            sel = which == k  # tilted ellipsoids: gradient is F (F^T (p - o) / A^2)
            local = ell.frame.T @ (point[:, sel] - ell.centre[:, None]) / ell.axes[:, None] ** 2
            grad[:, sel] = ell.frame @ local
    _blend_face_normals(surfaces, face_depth, ys, xs, which, wx, wy, (r0, r1, d), grad)
    rot = cam.rot.tolist()
    normal = np.stack([rot[i][0] * grad[0] + rot[i][1] * grad[1] + rot[i][2] * grad[2] for i in range(3)])
    normal /= np.sqrt((normal * normal).sum(axis=0)) + 1e-9
    kinds = np.array([ell.kind for ell in surfaces], np.int8)
    return Raster((y0, y1, x0, x1), index, ys, xs, kinds[which], point, normal)


def _blend_face_normals(surfaces, face_depth, ys, xs, which, wx, wy, rows, grad) -> None:
    """Smooth the crease where the jaw meets the cranium: where a pixel sees both, its
    normal blends the two surfaces' normals, weighted by which one is in front by how much
    (a sigmoid of the depth gap, 0.12 units wide). Silhouettes stay those of the union."""
    sel = np.flatnonzero(which <= 1)
    lam0, lam1 = face_depth[0][ys[sel], xs[sel]], face_depth[1][ys[sel], xs[sel]]
    both = np.isfinite(lam0) & np.isfinite(lam1)
    sel, lam0, lam1 = sel[both], lam0[both], lam1[both]
    if not len(sel):
        return
    unit = []
    for ell, lam in zip(surfaces[:2], (lam0, lam1), strict=True):
        g = np.stack(
            [
                (wx[sel] * rows[0][i] + wy[sel] * rows[1][i] + lam * rows[2][i] - ell.centre[i]) / ell.axes[i] ** 2
                for i in range(3)
            ]
        )
        unit.append(g / (np.sqrt((g * g).sum(axis=0)) + 1e-9))
    weight = 1.0 / (1.0 + np.exp(-(lam1 - lam0) / 0.12))
    grad[:, sel] = (1.0 - weight) * unit[0] + weight * unit[1]


def _shell_depth(head: Head, ell: Ellipsoid, front, back, wx, wy, rows, hit, depth) -> np.ndarray:
    """Depth of a partial shell: its front where that carries material, else its back (hair
    seen behind the face), else -inf (transparent there).

    Only pixels where the shell could win the z-test are evaluated, and the back only
    where the front is bare: the shells come after the solid surfaces in the cast, and the
    back of the hair shell lies behind the cranium wherever the cranium is seen.
    """
    out = np.full(front.shape, -np.inf, np.float32)
    hy, hx = np.nonzero(hit & (front > depth))
    if not len(hy):
        return out
    wxs, wys = wx[0, hx], wy[hy, 0]
    base = [wxs * rows[0][i] + wys * rows[1][i] for i in range(3)]
    lam = front[hy, hx]
    carried = head.shell_mask(ell.kind, *(base[i] + lam * rows[2][i] for i in range(3)))
    result = np.where(carried, lam, np.float32(-np.inf))
    lam_back = back[hy, hx]
    rest = ~carried & (lam_back > depth[hy, hx])
    if rest.any():
        lam_b = lam_back[rest]
        back_carried = head.shell_mask(ell.kind, *(base[i][rest] + lam_b * rows[2][i] for i in range(3)))
        result[rest] = np.where(back_carried, lam_b, np.float32(-np.inf))
    out[hy, hx] = result
    return out
