"""Image intake of the server: limits, base64, modes, alignment."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from facevib.align import norm_crop
from facevib.serve.errors import ServeError
from facevib.serve.images import ImageSpec, decode_base64, load_image, normalise, prepare_faces, resolve_mode


def encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **options)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's first bytes):
    IHDR, then the start of its compressed pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(4096)))


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(ServeError) as info:
        load_image(png_claiming(50_000, 50_000), max_pixels=40_000_000, field="images[0].data")
    assert (info.value.code, info.value.status, info.value.field) == ("image_too_large", 413, "images[0].data")
    assert "2500000000 pixels" in info.value.message


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"GIF89a" + bytes(40), "unsupported_image_format", "not a JPEG, PNG, WebP or BMP"),
        (b"\xff\xd8\xff\xe0\x00", "unsupported_image_format", "cut short"),
        (b"hello world", "unsupported_image_format", "68656c6c6f20776f"),
    ],
)
def test_unknown_or_cut_headers(data: bytes, code: str, words: str) -> None:
    with pytest.raises(ServeError) as info:
        load_image(data, max_pixels=10**8, field="f")
    assert info.value.code == code and words in info.value.message


def test_truncated_jpeg_is_refused_by_the_shared_decoder() -> None:
    data = encode(np.full((64, 64, 3), 128, np.uint8), "JPEG")
    with pytest.raises(ServeError) as info:
        scan = data.index(b"\xff\xda")  # cut inside the pixel data, after a complete header
        load_image(data[: (scan + len(data)) // 2], max_pixels=10**8, field="images[1].data")
    assert info.value.code == "invalid_image" and "truncated JPEG" in info.value.message
    assert info.value.status == 422 and info.value.field == "images[1].data"


def test_base64_variants_and_errors() -> None:
    payload = b"\x89PNG-bytes"
    text = base64.b64encode(payload).decode()
    assert decode_base64(text, "x") == payload
    assert decode_base64("data:image/png;base64," + text[:8] + "\n" + text[8:], "x") == payload
    for bad in ("not base64!", "abc", ""):
        with pytest.raises(ServeError) as info:
            decode_base64(bad, "images[2].data")
        assert info.value.code == "invalid_base64" and info.value.field == "images[2].data"


def test_modes() -> None:
    lm = np.zeros((5, 2))
    assert resolve_mode(ImageSpec(b"", None, None, "i"), (112, 112, 3), 112) == "aligned"
    assert resolve_mode(ImageSpec(b"", None, None, "i"), (200, 112, 3), 112) == "detect"
    assert resolve_mode(ImageSpec(b"", None, False, "i"), (112, 112, 3), 112) == "detect"
    assert resolve_mode(ImageSpec(b"", lm, None, "i"), (112, 112, 3), 112) == "landmarks"
    with pytest.raises(ServeError, match="not both"):
        resolve_mode(ImageSpec(b"", lm, True, "i"), (300, 300, 3), 112)


def test_landmark_mode_is_facevib_align_and_normalise_matches_training() -> None:
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (160, 140, 3), dtype=np.uint8)
    landmarks = np.array([[50.3, 60.1], [90.2, 61.0], [70.5, 85.3], [55.1, 110.2], [88.7, 109.9]])
    spec = ImageSpec(encode(photo, "PNG"), landmarks, None, "images[0]")
    mode, faces = prepare_faces(spec, input_size=112, max_pixels=10**8, detector=None)
    assert mode == "landmarks" and len(faces) == 1
    np.testing.assert_array_equal(faces[0].crop, norm_crop(photo, landmarks))
    blob = normalise(faces[0].crop[None], (127.5,) * 3, (127.5,) * 3)
    expected = (faces[0].crop.transpose(2, 0, 1)[None].astype(np.float32) / 255.0 - 0.5) / 0.5
    np.testing.assert_allclose(blob, expected, atol=1e-6)


def test_errors_of_each_mode() -> None:
    photo = encode(np.zeros((150, 120, 3), np.uint8), "PNG")
    with pytest.raises(ServeError) as info:
        prepare_faces(ImageSpec(photo, None, True, "images[3]"), input_size=112, max_pixels=10**8, detector=None)
    assert info.value.code == "wrong_crop_size" and "120x150" in info.value.message
    with pytest.raises(ServeError) as info:
        prepare_faces(ImageSpec(photo, None, None, "images[3]"), input_size=112, max_pixels=10**8, detector=None)
    assert info.value.code == "no_landmarks" and info.value.field == "images[3].landmarks"
    assert "112x112 aligned crop" in info.value.message and "5 landmarks" in info.value.message
    same = np.full((5, 2), 40.0)  # all points coincide: no similarity transform
    with pytest.raises(ServeError) as info:
        prepare_faces(ImageSpec(photo, same, None, "images[3]"), input_size=112, max_pixels=10**8, detector=None)
    assert info.value.code == "invalid_landmarks" and info.value.field == "images[3].landmarks"
