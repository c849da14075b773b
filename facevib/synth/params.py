"""Parameters of synthetic identities and of the conditions of each synthetic photo.

An :class:`Identity` is everything that stays the same across photos of one person: head
and jaw shape, where the eyes, nose and mouth sit and how they look, skin tone and skin
marks (moles, freckles, scars: painted into a texture in face coordinates so they move
with the face), hair style and colour, beard, glasses, eye colour, age. A
:class:`Conditions` is everything that changes from photo to photo: pose, expression,
lighting, age drift, background clutter, occlusion, camera blur, noise and JPEG quality,
and the error of the landmark detector.

Coordinates are the renderer's canonical head frame: x to the image right, y down, z
toward the camera, in units of roughly half a head height (the chin is near y = 1, the
crown near y = -1.1). Colours are RGB floats in [0, 255].

Both are drawn from a ``numpy.random.Generator`` that the caller derives from the seed
(see ``facevib.synth.dataset``); every draw happens in a fixed order, so the same generator
state always gives the same person and the same photo.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ["Identity", "Conditions", "sample_identity", "sample_conditions", "jitter_conditions", "TEXTURE_SIZE"]

TEXTURE_SIZE = 96  # texels across the canonical face square [-1, 1] x [-1.2, 1.2]
TEXTURE_Y_RANGE = 1.2

_SKIN_TONES = np.array(
    [[250, 218, 190], [233, 188, 152], [212, 160, 120], [184, 130, 92], [141, 92, 62], [96, 62, 42]],
    dtype=np.float64,
)
_HAIR_COLOURS = np.array(
    [
        [24, 20, 18],  # black
        [52, 36, 26],  # dark brown
        [92, 62, 38],  # brown
        [138, 98, 60],  # light brown
        [205, 172, 112],  # blonde
        [132, 58, 30],  # auburn
        [172, 82, 38],  # red
        [150, 148, 145],  # grey
        [218, 216, 210],  # white
    ],
    dtype=np.float64,
)
_HAIR_WEIGHTS = np.array([0.22, 0.22, 0.16, 0.1, 0.1, 0.06, 0.04, 0.06, 0.04])
_IRIS_COLOURS = np.array(
    [[58, 34, 20], [98, 58, 30], [118, 98, 52], [78, 110, 62], [70, 112, 165], [110, 122, 132]], dtype=np.float64
)
_FRAME_COLOURS = np.array([[15, 15, 15], [80, 45, 25], [170, 170, 175], [190, 160, 80], [140, 25, 30], [30, 50, 120]])
HAIR_STYLES = ("bald", "buzz", "short", "medium", "long")
BEARD_STYLES = ("none", "stubble", "goatee", "full")


@dataclass
class Identity:
    """The persistent appearance of one synthetic person (see the module docstring for units)."""

    head_axes: np.ndarray  # cranium/face ellipsoid semi-axes (a, b, c)
    head_y: float  # cranium centre (y)
    jaw_centre: np.ndarray  # jaw ellipsoid centre (x = 0, y, z)
    jaw_axes: np.ndarray
    eye_x: float  # half the eye spacing
    eye_y: float
    eye_w: float  # eye half width
    eye_h: float  # eye half height (upper lid)
    eye_tilt: float  # radians, outer corners up when positive
    iris_colour: np.ndarray
    brow_gap: float
    brow_thick: float
    brow_arch: float
    brow_len: float
    brow_slant: float
    brow_colour: np.ndarray
    nose_tip_y: float
    nose_width: float
    nose_depth: float  # how far the tip stands out of the face
    nose_tilt: float
    ala_width: float  # nostril wings
    mouth_y: float
    mouth_w: float  # half width
    lip_upper: float
    lip_lower: float
    lip_colour: np.ndarray
    ear_size: float
    ear_y: float
    skin_colour: np.ndarray
    hair_style: str
    hair_colour: np.ndarray
    hair_volume: float
    hairline: float
    hair_part: float
    hair_temple: float
    fringe: float  # amplitude of a jagged fringe (0: none)
    fringe_phase: float
    beard_style: str
    beard_density: float
    glasses: int  # 0 none, 1 round, 2 rectangular
    glasses_colour: np.ndarray
    glasses_size: np.ndarray  # lens half width, half height
    glasses_thick: float
    age: float  # 0 young ... 1 old
    # texture channels in face coordinates: skin albedo factor, hair strands, wrinkles, beard
    texture: np.ndarray = field(repr=False)

    def vector(self) -> np.ndarray:
        """The scalar parameters as one float vector (to compare identities)."""
        parts = []
        for value in self.__dict__.values():
            if isinstance(value, str):
                continue
            arr = np.asarray(value, dtype=np.float64).ravel()
            if arr.size <= 3:
                parts.append(arr)
        return np.concatenate(parts)


@dataclass
class Conditions:
    """The conditions of one photo of an identity."""

    yaw: float  # radians
    pitch: float
    roll: float
    scale: float  # pixels per canonical unit, as a fraction of the crop size
    centre: np.ndarray  # head centre in the crop, as fractions of the crop size
    smile: float
    mouth_open: float
    brow_raise: float
    squint: float
    gaze: np.ndarray
    age_shift: float
    light_dir: np.ndarray  # unit vector toward the light (camera frame)
    ambient: float
    diffuse: float
    specular: float
    light_tint: np.ndarray
    exposure: float
    gamma: float
    hair_tint: float  # per-photo hair colour factor (lighting, dye, wetness)
    wear_glasses: bool
    clothes_colour: np.ndarray
    background_seed: int
    occlusion: str  # none, hand, patch, mask, sunglasses, hat
    occlusion_seed: int
    blur: float  # Gaussian sigma in pixels at a 192-pixel crop
    motion_blur: float  # kernel length in pixels (0: none)
    motion_angle: float
    downscale: float  # resample factor (1: none)
    noise: float  # sensor noise sigma in 8-bit levels
    jpeg_quality: int  # 0: no source compression
    landmark_sigma: float  # detector error, as a fraction of the inter-ocular distance
    landmark_seed: int


def _choice(rng: np.random.Generator, palette: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    index = rng.choice(len(palette), p=weights)
    return palette[index]


def _texture(rng: np.random.Generator) -> np.ndarray:
    """Four texture channels in face coordinates (TEXTURE_SIZE square)."""
    size = TEXTURE_SIZE
    # Skin: low-frequency blotches (a few percent), then marks painted in face coordinates.
    blotch = cv2.resize(rng.standard_normal((6, 6)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    skin = 1.0 + rng.uniform(0.015, 0.06) * blotch
    to_px = np.array([(size - 1) / 2.0, (size - 1) / (2 * TEXTURE_Y_RANGE)])

    def px(x: float, y: float) -> tuple[int, int]:
        return int(round((x + 1.0) * to_px[0])), int(round((y + TEXTURE_Y_RANGE) * to_px[1]))

    for _ in range(rng.choice(4, p=[0.45, 0.3, 0.15, 0.1])):  # moles
        centre = px(rng.uniform(-0.55, 0.55), rng.uniform(-0.6, 0.85))
        cv2.circle(skin, centre, int(rng.integers(1, 3)), float(rng.uniform(0.35, 0.6)), -1, cv2.LINE_AA)
    if rng.random() < 0.2:  # freckles over nose and cheeks
        for _ in range(int(rng.integers(10, 40))):
            centre = px(rng.normal(0, 0.28), rng.normal(0.2, 0.12))
            cv2.circle(skin, centre, 1, float(rng.uniform(0.7, 0.85)), -1, cv2.LINE_AA)
    if rng.random() < 0.08:  # a scar
        a = px(rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.7))
        b = (a[0] + int(rng.integers(-12, 13)), a[1] + int(rng.integers(-12, 13)))
        cv2.line(skin, a, b, float(rng.uniform(1.15, 1.3)), 1, cv2.LINE_AA)
    # Hair strands: stripes running down from the crown, with a per-person frequency.
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    freq = rng.uniform(18, 40)
    wobble = cv2.resize(rng.standard_normal((5, 5)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    hair = 1.0 + rng.uniform(0.08, 0.22) * np.sin(freq * xs + 3.0 * wobble + 2.0 * ys)
    # Wrinkles, scaled by age at render time.
    wrinkles = np.zeros((size, size), np.float32)
    for k in range(int(rng.integers(2, 5))):  # forehead
        y = -0.42 - 0.08 * k + rng.normal(0, 0.015)
        pts = np.array([px(x, y + 0.03 * np.sin(3 * x + k)) for x in np.linspace(-0.35, 0.35, 6)], np.int32)
        cv2.polylines(wrinkles, [pts], False, float(rng.uniform(0.5, 1.0)), 1, cv2.LINE_AA)
    for side in (-1, 1):  # nasolabial folds and crow's feet
        pts = np.array([px(side * (0.12 + 0.1 * t), 0.3 + 0.28 * t) for t in np.linspace(0, 1, 5)], np.int32)
        cv2.polylines(wrinkles, [pts], False, float(rng.uniform(0.6, 1.0)), 1, cv2.LINE_AA)
        for k in range(3):
            a = px(side * 0.45, -0.1 + 0.05 * (k - 1))
            b = px(side * 0.55, -0.12 + 0.09 * (k - 1))
            cv2.line(wrinkles, a, b, 0.6, 1, cv2.LINE_AA)
    # Beard/stubble density noise.
    beard = np.clip(rng.uniform(0.0, 1.0, (size, size)).astype(np.float32), 0, 1)
    beard = 0.5 * beard + 0.5 * cv2.GaussianBlur(beard, (3, 3), 0)
    return np.stack([skin, hair, wrinkles, beard], axis=-1).astype(np.float32)


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity. Every attribute has a range wide enough that identities differ in
    many small ways, and palettes coarse enough that many identities share each coarse cue
    (hair colour, skin tone), so telling them apart needs the geometry and the marks."""
    u = rng.uniform
    head_axes = np.array([u(0.64, 0.8), u(0.92, 1.02), u(0.78, 0.92)])
    head_y = u(-0.16, -0.08)
    # The jaw barely stands out of the cranium in front, so the two blend into one face.
    jaw_axes = np.array([head_axes[0] * u(0.75, 0.95), u(0.42, 0.56), head_axes[2] * u(0.72, 0.86)])
    jaw_centre = np.array([0.0, u(0.36, 0.48), u(-0.1, 0.0)])
    eye_y = u(-0.13, -0.03)
    tone = rng.beta(1.3, 1.6) * (len(_SKIN_TONES) - 1)
    low = int(np.floor(tone))
    high = min(low + 1, len(_SKIN_TONES) - 1)
    skin = _SKIN_TONES[low] + (tone - low) * (_SKIN_TONES[high] - _SKIN_TONES[low])
    skin = np.clip(skin * u(0.94, 1.06) + np.array([u(-8, 8), u(-6, 6), u(-10, 10)]), 0, 255)
    hair_style = HAIR_STYLES[rng.choice(len(HAIR_STYLES), p=[0.07, 0.13, 0.35, 0.2, 0.25])]
    hair = np.clip(_choice(rng, _HAIR_COLOURS, _HAIR_WEIGHTS) * u(0.85, 1.15), 0, 255)
    beard_style = BEARD_STYLES[rng.choice(len(BEARD_STYLES), p=[0.65, 0.15, 0.08, 0.12])]
    lip = np.clip(skin * np.array([u(0.8, 0.95), u(0.5, 0.68), u(0.5, 0.68)]) + np.array([u(0, 30), 0, 0]), 0, 255)
    glasses = int(rng.choice(3, p=[0.74, 0.13, 0.13]))
    age = u(0.0, 1.0)
    return Identity(
        head_axes=head_axes,
        head_y=head_y,
        jaw_centre=jaw_centre,
        jaw_axes=jaw_axes,
        eye_x=u(0.26, 0.35),
        eye_y=eye_y,
        eye_w=u(0.11, 0.15),
        eye_h=u(0.045, 0.07),
        eye_tilt=u(-0.12, 0.16),
        iris_colour=np.clip(_choice(rng, _IRIS_COLOURS) * u(0.8, 1.2), 0, 255),
        brow_gap=u(0.08, 0.15),
        brow_thick=u(0.03, 0.065),
        brow_arch=u(0.0, 0.05),
        brow_len=u(0.18, 0.27),
        brow_slant=u(-0.06, 0.06),
        brow_colour=np.clip(hair * u(0.5, 0.9) + u(-10, 10), 0, 255),
        nose_tip_y=eye_y + u(0.32, 0.43),
        nose_width=u(0.055, 0.09),
        nose_depth=u(0.1, 0.2),
        nose_tilt=u(0.2, 0.45),
        ala_width=u(0.08, 0.13),
        mouth_y=eye_y + u(0.62, 0.76),
        mouth_w=u(0.18, 0.27),
        lip_upper=u(0.018, 0.045),
        lip_lower=u(0.025, 0.065),
        lip_colour=lip,
        ear_size=u(0.85, 1.2),
        ear_y=u(-0.05, 0.1),
        skin_colour=skin,
        hair_style=hair_style,
        hair_colour=hair,
        hair_volume=u(0.03, 0.12) if hair_style not in ("bald", "buzz") else 0.015,
        hairline=u(-0.66, -0.45),
        hair_part=u(-0.15, 0.15),
        hair_temple=u(0.0, 0.5),
        fringe=u(0.12, 0.3) if rng.random() < 0.22 and hair_style in ("short", "medium", "long") else 0.0,
        fringe_phase=u(0, 2 * np.pi),
        beard_style=beard_style,
        beard_density=u(0.35, 0.9),
        glasses=glasses,
        glasses_colour=_choice(rng, _FRAME_COLOURS).astype(np.float64),
        glasses_size=np.array([u(0.12, 0.17), u(0.08, 0.12)]),
        glasses_thick=u(0.008, 0.02),
        age=age,
        texture=_texture(rng),
    )


def sample_conditions(
    rng: np.random.Generator,
    identity: Identity,
    *,
    yaw_sigma: float = 20.0,
    yaw_range: tuple[float, float] | None = None,
    age_shift: float | None = None,
    difficulty: float = 1.0,
) -> Conditions:
    """Draw the conditions of one photo.

    ``yaw_sigma`` (degrees) sets the spread of head yaw; ``yaw_range`` instead draws
    ``|yaw|`` uniformly in that range with a random sign (profile photos). ``age_shift``
    fixes the age offset from the identity's base age (default: a small random drift).
    ``difficulty`` scales the nuisance strength (occlusion, blur, noise, landmark error).
    """
    u = rng.uniform
    if yaw_range is None:
        yaw = np.clip(rng.normal(0.0, yaw_sigma), -75, 75)
    else:
        yaw = u(*yaw_range) * rng.choice([-1.0, 1.0])
    smile, mouth_open = 0.0, 0.0
    expression = rng.random()
    if expression < 0.3:
        smile = u(0.3, 1.0)
    elif expression < 0.45:
        smile, mouth_open = u(0.3, 1.0), u(0.2, 1.0)
    elif expression < 0.55:
        mouth_open = u(0.2, 1.0)
    azimuth, elevation = np.radians(u(-75, 75)), np.radians(u(-25, 55))
    light = np.array([np.sin(azimuth) * np.cos(elevation), -np.sin(elevation), np.cos(azimuth) * np.cos(elevation)])
    occlusion = "none"
    if rng.random() < 0.3 * difficulty:
        occlusion = str(rng.choice(["hand", "patch", "mask", "sunglasses", "hat"], p=[0.25, 0.3, 0.15, 0.15, 0.15]))
    heavy = rng.random() < 0.2 * difficulty
    return Conditions(
        yaw=float(np.radians(yaw)),
        pitch=float(np.radians(np.clip(rng.normal(0, 9), -30, 30))),
        roll=float(np.radians(np.clip(rng.normal(0, 8), -30, 30))),
        scale=u(0.24, 0.31),
        centre=np.array([0.5 + rng.normal(0, 0.035), 0.5 + rng.normal(0, 0.035)]),
        smile=smile,
        mouth_open=mouth_open,
        brow_raise=u(0, 1) if rng.random() < 0.2 else 0.0,
        squint=u(0.3, 0.9) if rng.random() < 0.12 else u(0, 0.15),
        gaze=rng.normal(0, 0.5, 2).clip(-1, 1),
        age_shift=float(rng.normal(0, 0.06) if age_shift is None else age_shift),
        light_dir=light,
        ambient=u(0.3, 0.6),
        diffuse=u(0.35, 0.8),
        specular=u(0.0, 0.25),
        light_tint=np.array([u(0.85, 1.15), u(0.9, 1.1), u(0.82, 1.18)]),
        exposure=u(0.75, 1.25),
        gamma=u(0.8, 1.25),
        hair_tint=u(0.85, 1.15),
        wear_glasses=bool(identity.glasses and rng.random() < 0.85),
        clothes_colour=u(0, 255, 3),
        background_seed=int(rng.integers(0, 2**31)),
        occlusion=occlusion,
        occlusion_seed=int(rng.integers(0, 2**31)),
        blur=u(0.4, 1.2) + (u(0.5, 1.5) if heavy else 0.0),
        motion_blur=u(3, 9) if rng.random() < 0.1 * difficulty else 0.0,
        motion_angle=u(0, np.pi),
        downscale=u(0.3, 0.6) if rng.random() < 0.15 * difficulty else 1.0,
        noise=u(1.0, 5.0) + (u(3, 8) if heavy else 0.0),
        jpeg_quality=int(rng.integers(30, 96)) if rng.random() < 0.7 else 0,
        landmark_sigma=u(0.01, 0.035) * difficulty,
        landmark_seed=int(rng.integers(0, 2**31)),
    )


def jitter_conditions(rng: np.random.Generator, base: Conditions) -> Conditions:
    """Another frame of the same video (IJB "media"): same scene, slightly moved head and
    expression, fresh sensor noise and landmark error."""
    u = rng.uniform
    out = Conditions(**base.__dict__)
    out.yaw = base.yaw + float(np.radians(rng.normal(0, 4)))
    out.pitch = base.pitch + float(np.radians(rng.normal(0, 3)))
    out.roll = base.roll + float(np.radians(rng.normal(0, 3)))
    out.scale = base.scale * u(0.95, 1.05)
    out.centre = base.centre + rng.normal(0, 0.01, 2)
    out.smile = float(np.clip(base.smile + rng.normal(0, 0.15), 0, 1))
    out.mouth_open = float(np.clip(base.mouth_open + rng.normal(0, 0.15), 0, 1))
    out.gaze = (base.gaze + rng.normal(0, 0.2, 2)).clip(-1, 1)
    out.occlusion_seed = int(rng.integers(0, 2**31))
    out.landmark_seed = int(rng.integers(0, 2**31))
    out.blur = base.blur * u(0.9, 1.1)
    out.noise = base.noise * u(0.8, 1.2)
    return out
