"""Render a synthetic face photo (a loose crop) and its exact 5 landmarks, numpy and cv2 only.

Pipeline for one photo: a cluttered background and shoulders; the head's ray cast
(:mod:`facevib.synth.geometry`) gives per-pixel surface kind, face coordinates and normals; face
coordinates index the identity's texture (skin blotches, moles, freckles, scars, hair
strands, age wrinkles, beard), so marks stay on the face in every pose; features are drawn
on the face surface (:mod:`facevib.synth.features`); Lambertian + Blinn-Phong shading under the
photo's light; occluders; then the camera: blur, motion blur, low resolution, exposure and
gamma, sensor noise and the source photo's JPEG compression.

The landmarks (eye centres, nose tip, mouth corners, ArcFace order) are projections of the
3-D points the features are drawn at; :func:`noisy_landmarks` adds a detector's error.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from facevib.synth.features import Painter, draw_features, eye_centres, mouth_corners
from facevib.synth.geometry import (
    CURTAIN,
    EAR,
    HAIR,
    HAT,
    NECK,
    NOSE,
    SKIN,
    Camera,
    Head,
    Raster,
    raycast,
    rotation,
)
from facevib.synth.params import TEXTURE_SIZE, TEXTURE_Y_RANGE, Conditions, Identity

__all__ = ["render_face", "noisy_landmarks"]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    # A 2x2 colour field resized bilinearly is a smooth gradient at almost no cost.
    corners = rng.uniform(20, 235, (2, 2, 3)).astype(np.uint8)
    img = cv2.resize(corners, (size, size), interpolation=cv2.INTER_LINEAR)
    for _ in range(int(rng.integers(2, 9))):  # clutter
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        kind = int(rng.integers(4))
        p = rng.integers(-size // 4, size + size // 4, 2)
        q = p + rng.integers(-size // 2, size // 2, 2)
        if kind == 0:
            cv2.rectangle(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.circle(img, (int(p[0]), int(p[1])), int(rng.integers(4, size // 3)), colour, -1, cv2.LINE_AA)
        elif kind == 2:
            cv2.line(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, int(rng.integers(1, 8)), cv2.LINE_AA)
        else:
            pts = rng.integers(-size // 4, size + size // 4, (int(rng.integers(3, 6)), 2)).astype(np.int32)
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
    if rng.random() < 0.5:  # out of focus: down and up again is a cheap wide blur
        small = max(4, int(size / rng.uniform(3.0, 8.0)))
        img = cv2.resize(cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA), (size, size))
    return img


def _occlude(rng: np.random.Generator, img: np.ndarray, kind: str, landmarks: np.ndarray, iod: float) -> float:
    """Draw a hand or an object over part of the face; return a rough covered fraction."""
    if kind == "hand":
        target = landmarks[int(rng.choice([0, 1, 2, 3, 4]))] + rng.normal(0, 0.3 * iod, 2)
        tone = np.array([235.0, 190.0, 150.0]) * rng.uniform(0.45, 1.05)
        axes = (int(iod * rng.uniform(0.55, 0.8)), int(iod * rng.uniform(0.45, 0.65)))
        angle = rng.uniform(0, 360)
        cv2.ellipse(img, (int(target[0]), int(target[1])), axes, angle, 0, 360, tuple(tone.tolist()), -1, cv2.LINE_AA)
        along = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))])
        across = np.array([-along[1], along[0]])
        for k in range(4):  # fingers
            base = target + along * axes[0] * 0.8 + across * (k - 1.5) * axes[1] * 0.45
            tip = base + along * axes[0] * rng.uniform(0.7, 1.1)
            shade = tuple((tone * rng.uniform(0.85, 1.0)).tolist())
            thick = max(2, int(axes[1] * 0.35))
            cv2.line(img, (int(base[0]), int(base[1])), (int(tip[0]), int(tip[1])), shade, thick, cv2.LINE_AA)
        return 0.3
    centre = landmarks.mean(axis=0) + rng.normal(0, 0.8 * iod, 2)
    half = iod * rng.uniform(0.3, 0.9, 2)
    colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
    if rng.random() < 0.5:
        p, q = centre - half, centre + half
        cv2.rectangle(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, -1, cv2.LINE_AA)
    else:
        c, a = (int(centre[0]), int(centre[1])), (int(half[0]), int(half[1]))
        cv2.ellipse(img, c, a, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    return 0.25


def _albedo(head: Head, raster: Raster) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel base colour of the covered pixels (n, 3) float, and the hair mask (n,)."""
    ident, cond, kind = head.ident, head.cond, raster.kind
    scale_x = (TEXTURE_SIZE - 1) / 2.0
    scale_y = (TEXTURE_SIZE - 1) / (2 * TEXTURE_Y_RANGE)
    # cv2.remap wants a 2-D map under 32767 rows: fold the n pixels into rows of 256.
    n = len(kind)
    rows = -(-n // 256)
    maps = np.zeros((2, rows * 256), np.float32)
    maps[0, :n] = (raster.point[0] + 1.0) * scale_x
    maps[1, :n] = (raster.point[1] + TEXTURE_Y_RANGE) * scale_y
    maps = maps.reshape(2, rows, 256)
    tex = cv2.remap(ident.texture, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    tex = tex.reshape(-1, ident.texture.shape[2])[:n]
    age = head.age
    wrinkle = 1.0 - 0.35 * np.clip(age - 0.35, 0, 1) * tex[:, 2]
    albedo = (ident.skin_colour * (1.0 - 0.06 * age))[None, :] * (tex[:, 0] * wrinkle)[:, None]
    albedo[kind == NECK] *= 0.93
    hair_colour = ident.hair_colour * cond.hair_tint
    grey = np.clip((age - 0.55) / 0.5, 0, 0.9)  # greying with age
    hair_colour = hair_colour + (np.array([190.0, 188.0, 185.0]) - hair_colour) * grey
    hairy = (kind == HAIR) | (kind == CURTAIN)
    strands = hair_colour[None, :] * tex[hairy][:, 1:2]
    albedo[hairy] = 0.55 * albedo[hairy] + 0.45 * strands if ident.hair_style == "buzz" else strands
    if ident.beard_style != "none":
        x, y = raster.point[0], raster.point[1]
        # Moustache line above the mouth, rising along the cheeks toward the sideburns; the
        # density fades in over 0.08 units so the beard has no hard edge.
        top = ident.mouth_y - (0.06 if ident.beard_style == "goatee" else 0.09)
        top = top - 0.2 * np.clip((np.abs(x) - ident.mouth_w) / 0.25, 0.0, 1.0)
        fade = np.clip((y - top) / 0.08, 0.0, 1.0) * ((kind == SKIN) & (raster.point[2] > -0.1))
        if ident.beard_style == "goatee":
            fade *= np.clip((ident.mouth_w * 0.9 - np.abs(x)) / 0.05, 0.0, 1.0)
        density = ident.beard_density * (0.45 if ident.beard_style == "stubble" else 1.0)
        alpha = (density * tex[:, 3] * fade)[:, None]
        albedo = albedo * (1 - alpha) + (hair_colour * 0.7)[None, :] * alpha
    albedo[kind == HAT] = cond.clothes_colour[::-1] * 0.8
    return np.clip(albedo, 0, 255), hairy


def _shade(albedo: np.ndarray, raster: Raster, cond: Conditions) -> np.ndarray:
    normal, kind = raster.normal, raster.kind
    light = cond.light_dir.tolist()
    lambert = np.maximum(normal[0] * light[0] + normal[1] * light[1] + normal[2] * light[2], 0.0)
    # Blinn-Phong highlight, viewer on +z; hair, hats and clothes stay matte.
    half = cond.light_dir + np.array([0.0, 0.0, 1.0])
    half = (half / np.linalg.norm(half)).tolist()
    spec = np.maximum(normal[0] * half[0] + normal[1] * half[1] + normal[2] * half[2], 0.0) ** 24
    spec *= cond.specular * (kind <= NECK)
    shade = cond.ambient + cond.diffuse * lambert
    out = albedo.astype(np.float32) * shade[:, None] * cond.light_tint[None, :] + 255.0 * spec[:, None]
    return np.clip(out, 0, 255).astype(np.uint8)


def _camera_effects(img: np.ndarray, cond: Conditions, size: int) -> np.ndarray:
    scale = size / 192.0
    img = cv2.GaussianBlur(img, (0, 0), cond.blur * scale)
    if cond.motion_blur:
        length = max(2, int(round(cond.motion_blur * scale)))
        kernel = np.zeros((length, length), np.float32)
        c = (length - 1) / 2.0
        dx, dy = np.cos(cond.motion_angle) * c, np.sin(cond.motion_angle) * c
        cv2.line(kernel, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0, 1)
        img = cv2.filter2D(img, -1, kernel / kernel.sum())
    if cond.downscale < 1.0:
        small = max(8, int(size * cond.downscale))
        img = cv2.resize(cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA), (size, size))
    lut = np.clip(255.0 * (np.arange(256) / 255.0 * cond.exposure) ** cond.gamma, 0, 255).astype(np.uint8)
    img = cv2.LUT(img, lut)
    # Sensor noise: a window of a fixed Gaussian noise bank at a per-photo offset, which is
    # as random as fresh noise for a network and ~5x cheaper to make.
    rng = np.random.default_rng([cond.landmark_seed, 1])
    if size <= _NOISE_BANK_SIZE:
        oy, ox = (int(v) for v in rng.integers(0, _NOISE_BANK_SIZE - size + 1, 2))
        noise = _noise_bank()[oy : oy + size, ox : ox + size]
    else:
        noise = rng.standard_normal(img.shape, dtype=np.float32)
    img = cv2.add(img, noise * np.float32(cond.noise), dtype=cv2.CV_8U)
    if cond.jpeg_quality:  # the source photo's own compression (cv2 codes BGR)
        ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(cond.jpeg_quality)])
        img = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])
    return img


_NOISE_BANK_SIZE = 512  # larger than the crops the synthetic set renders by default


@functools.cache
def _noise_bank() -> np.ndarray:
    """Unit Gaussian noise, the same in every process (fixed seed)."""
    return np.random.default_rng(0x5EED).standard_normal((_NOISE_BANK_SIZE, _NOISE_BANK_SIZE, 3), dtype=np.float32)


def noisy_landmarks(landmarks: np.ndarray, cond: Conditions) -> np.ndarray:
    """A detector's landmarks: the exact ones plus Gaussian error (sigma a fraction of the
    inter-ocular distance, growing with yaw) and, now and then, one badly placed point."""
    rng = np.random.default_rng(cond.landmark_seed)
    iod = max(float(np.linalg.norm(landmarks[1] - landmarks[0])), 12.0)
    sigma = cond.landmark_sigma * iod * (1.0 + abs(np.degrees(cond.yaw)) / 45.0)
    noisy = landmarks + rng.normal(0.0, sigma, landmarks.shape)
    if rng.random() < 0.05:
        noisy[int(rng.integers(5))] += rng.normal(0.0, 0.15 * iod, 2)
    return noisy


def render_face(ident: Identity, cond: Conditions, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Render a ``size`` x ``size`` RGB uint8 loose crop of ``ident`` under ``cond``.

    Returns ``(image, landmarks, visibility)``: the exact landmarks ``(5, 2)`` float64 in
    crop pixels (ArcFace order: left eye, right eye, nose tip, left and right mouth corners)
    and a visibility in [0, 1] (frontal and unoccluded = 1), from which a detector score
    can be made.
    """
    head = Head(ident, cond)
    cam = Camera(rotation(cond.yaw, cond.pitch, cond.roll), cond.scale * size, cond.centre * size)
    img = _background(np.random.default_rng(cond.background_seed), size)
    shoulder = cam.project(np.array([[0.0, ident.jaw_centre[1] + 1.05, -0.3]]))[0]
    axes = (int(cam.scale * 1.6), int(cam.scale * 0.75))
    cv2.ellipse(
        img,
        (int(shoulder[0]), int(shoulder[1])),
        axes,
        float(np.degrees(cond.roll) * 0.3),
        0,
        360,
        tuple(float(v) for v in cond.clothes_colour),
        -1,
        cv2.LINE_AA,
    )
    raster = raycast(head, cam, size)
    y0, y1, x0, x1 = raster.box
    if len(raster.ys):
        flat, hairy = _albedo(head, raster)
        albedo = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
        albedo[raster.ys, raster.xs] = flat.astype(np.uint8)
        plain = albedo.copy()
        restore = np.zeros(albedo.shape[:2], bool)
        restore[raster.ys, raster.xs] = hairy | (raster.kind == NOSE) | (raster.kind == EAR) | (raster.kind == HAT)
        draw_features(Painter(albedo, np.array([x0, y0], np.float64), head, cam), restore, plain)
        shaded = _shade(albedo[raster.ys, raster.xs], raster, cond)
        img[y0:y1, x0:x1][raster.ys, raster.xs] = shaded
    points = np.concatenate([eye_centres(head), head.nose_tip[None], mouth_corners(head)])
    landmarks = cam.project(points)
    occluded = 0.0
    if cond.occlusion in ("hand", "patch"):
        iod = max(float(np.linalg.norm(landmarks[1] - landmarks[0])), 0.3 * cam.scale)
        occluded = _occlude(np.random.default_rng(cond.occlusion_seed), img, cond.occlusion, landmarks, iod)
    elif cond.occlusion != "none":
        occluded = 0.3
    img = _camera_effects(img, cond, size)
    visibility = float(np.clip(np.cos(cond.yaw) * (1.0 - occluded), 0.0, 1.0))
    return img, landmarks, visibility
