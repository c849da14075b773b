"""scikit-learn's 8x8 digits (1,797 images, ships offline) and "shifted digits".

Shifted digits follow the shiftedMNIST construction of "Learning to Find Correlated
Features by Maximizing Information Flow in Convolutional Neural Networks" (§4.1): each
digit is drawn on a textured background; in training the texture is tied to the class
(digit k on texture k), at test time the texture is drawn at random, so a model that
learnt the texture instead of the digit shape fails at test. Here the digits are upsampled
to 32x32 (the paper's input size) and the ten textures are procedural gratings, since no
texture set ships offline.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["load_digits_split", "make_shifted_digits", "make_textures"]

DIGITS_MAX = 16.0  # load_digits pixel values are 0..16
_TEXTURE_SIDE = 64


def load_digits_split(test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified split of sklearn's digits: ``(x_train, y_train, x_test, y_test)``.

    Images are float32 (N, 8, 8) scaled to [-1, 1] (as the paper scales MNIST); labels int64.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    digits = load_digits()
    images = (digits.images.astype(np.float32) / DIGITS_MAX) * 2.0 - 1.0
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target.astype(np.int64), test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    return x_train, y_train, x_test, y_test


def make_textures(num: int = 10, seed: int = 0, side: int = _TEXTURE_SIDE) -> np.ndarray:
    """``num`` distinct grey textures, float32 (num, side, side) in [0, 1].

    Texture k is a sum of two sinusoidal gratings with its own orientations and spatial
    frequencies plus a little pixel noise: easy to tell apart from any 32x32 crop, which is
    what makes it the shortcut feature of shifted digits.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    textures = np.empty((num, side, side), dtype=np.float32)
    for k in range(num):
        angle = np.pi * k / num
        freq = 2 * np.pi * (0.08 + 0.05 * (k % 4))
        wave = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))
        wave += 0.5 * np.sin(2.3 * freq * (xx * np.cos(angle + 1.1) + yy * np.sin(angle + 1.1)))
        wave += 0.3 * rng.standard_normal((side, side)).astype(np.float32)
        textures[k] = (wave - wave.min()) / (wave.max() - wave.min())
    return textures


def make_shifted_digits(
    images: np.ndarray,
    labels: np.ndarray,
    textures: np.ndarray,
    tied: bool,
    seed: int,
    size: int = 32,
    texture_contrast: float = 0.6,
) -> tuple[np.ndarray, np.ndarray]:
    """Digits on textured backgrounds: ``(images float32 (N, 1, size, size) in [-1, 1], texture ids)``.

    Args:
        images: digits in [-1, 1], (N, h, w) (from :func:`load_digits_split`).
        labels: digit classes (N,), used as texture ids when ``tied``.
        textures: (T, S, S) in [0, 1] with S >= size and T > max label.
        tied: True for the training set (texture id = label); False for validation/test
            (texture id uniform at random).
        seed: fixes the texture ids and the crop positions.
        size: output side (the paper's 32).
        texture_contrast: the texture's peak brightness; the digit stroke is 1.

    The digit is composited over a random crop of its texture by its intensity:
    ``out = a + (1 - a) * contrast * texture``, a = digit intensity in [0, 1].
    """
    num_textures, side, _ = textures.shape
    if side < size:
        raise ValueError(f"textures are {side}x{side}, smaller than the output size {size}")
    if tied and labels.max() >= num_textures:
        raise ValueError(f"tied textures need one texture per class: {num_textures} textures, label {labels.max()}")
    rng = np.random.default_rng(seed)
    ids = labels.astype(np.int64) if tied else rng.integers(0, num_textures, size=len(labels))
    out = np.empty((len(images), 1, size, size), dtype=np.float32)
    for i, (image, texture_id) in enumerate(zip(images, ids, strict=True)):
        alpha = np.clip(cv2.resize((image + 1.0) / 2.0, (size, size), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
        top, left = rng.integers(0, side - size + 1, size=2)
        patch = textures[texture_id, top : top + size, left : left + size]
        out[i, 0] = (alpha + (1.0 - alpha) * texture_contrast * patch) * 2.0 - 1.0
    return out, ids
