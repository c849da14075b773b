"""Verification .bin files: insightface's pickle of (encoded images, issame), including py2-era files."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from facevib.data.bins import BinFormatError, encode_jpeg, read_bin, write_bin


def _images(count: int, size: int = 112, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        base = cv2.resize(rng.integers(0, 256, (7, 7, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
        out.append(base)
    return out


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")  # PIL: an encoder independent of cv2
    return buf.getvalue()


def test_round_trip_png_is_exact(tmp_path: Path):
    images = _images(8)
    path = tmp_path / "lfw.bin"
    write_bin(path, [_png(im) for im in images], [True, False, True, False])
    data = read_bin(path)
    assert data.name == "lfw" and len(data) == 4
    assert data.images.shape == (8, 112, 112, 3) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images, np.stack(images))  # RGB, not BGR
    np.testing.assert_array_equal(data.issame, [True, False, True, False])
    # What insightface's load_bin sees: a plain pickle of (list of bytes, list of bool).
    with open(path, "rb") as handle:
        bins, issame = pickle.load(handle, encoding="bytes")
    assert isinstance(bins[0], bytes) and issame == [True, False, True, False]


def test_jpeg_round_trip_matches_an_independent_decoder(tmp_path: Path):
    images = _images(4, seed=1)
    encoded = [encode_jpeg(im, 95) for im in images]
    write_bin(tmp_path / "x.bin", encoded, [True, False])
    data = read_bin(tmp_path / "x.bin")
    for i, buf in enumerate(encoded):
        reference = np.asarray(Image.open(io.BytesIO(buf)).convert("RGB"))
        assert np.abs(data.images[i].astype(int) - reference.astype(int)).max() <= 2  # libjpeg builds differ slightly
        assert np.abs(data.images[i].astype(int) - images[i].astype(int)).mean() < 4  # quality 95


def _py2_pickle(images: list[bytes], issame: list[bool]) -> bytes:
    """The opcodes cPickle (Python 2, protocol 2) writes for (list of str, list of bool)."""
    out = bytearray(b"\x80\x02]q\x00(")
    for item in images:
        out += (b"U" + bytes([len(item)]) if len(item) < 256 else b"T" + struct.pack("<I", len(item))) + item
    out += b"e]q\x01("
    out += b"".join(b"\x88" if flag else b"\x89" for flag in issame)
    out += b"e\x86q\x02."
    return bytes(out)


def test_reads_python2_pickles(tmp_path: Path):
    images = _images(4, seed=2)
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(_py2_pickle([_png(im) for im in images], [False, True]))
    with pytest.raises(UnicodeDecodeError):  # what a plain py3 pickle.load does with such a file
        pickle.loads(path.read_bytes())
    data = read_bin(path)
    np.testing.assert_array_equal(data.images, np.stack(images))
    np.testing.assert_array_equal(data.issame, [False, True])


def test_reads_images_stored_as_numpy_arrays_under_the_old_numpy_module(tmp_path: Path):
    images = _images(2, seed=3)
    arrays = [np.frombuffer(_png(im), dtype=np.uint8) for im in images]
    raw = pickle.dumps((arrays, np.array([True])), protocol=2)
    # numpy < 2 named its reconstructor numpy.core.multiarray; protocol 2 spells globals as text.
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in raw
    path = tmp_path / "old.bin"
    path.write_bytes(raw)
    data = read_bin(path)
    np.testing.assert_array_equal(data.images, np.stack(images))
    assert data.issame.tolist() == [True]


def test_threaded_decoding_equals_single_threaded(tmp_path: Path):
    images = _images(20, seed=4)
    distinct = [encode_jpeg(im) for im in images]
    encoded = [distinct[i % 20] for i in range(1100)]  # more than two 512-image chunks
    write_bin(tmp_path / "many.bin", encoded, [i % 2 == 0 for i in range(550)])
    one = read_bin(tmp_path / "many.bin", num_threads=1)
    four = read_bin(tmp_path / "many.bin", num_threads=4)
    np.testing.assert_array_equal(one.images, four.images)
    np.testing.assert_array_equal(four.images[1041], one.images[1])


def test_size_check_and_resize(tmp_path: Path):
    small = _images(2, size=96, seed=5)
    write_bin(tmp_path / "s.bin", [_png(im) for im in small], [True])
    with pytest.raises(BinFormatError, match=r"s\.bin: image 0 is 96x96, expected 112x112"):
        read_bin(tmp_path / "s.bin")
    data = read_bin(tmp_path / "s.bin", resize=True)
    assert data.images.shape == (2, 112, 112, 3)


def _write_raw(path: Path, obj) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"bins": [], "issame": []}, "expected a pickled \\(images, issame\\) pair, got a dict"),
        (([b"a", b"b"], [True], "extra"), "got a tuple of length 3"),
        (("not a list", [True]), "image list is a str"),
        (([b"x"] * 3, [True]), "odd number of images \\(3\\)"),
        (([b"x"] * 4, [True]), "4 images but 1 issame flags"),
        (([b"x"] * 2, [[True]]), "flat list of booleans"),
        (([b"x"] * 2, [2]), "values other than 0/1"),
        (([], []), "no pairs"),
        (([_png(_images(1)[0]), 5], [True]), "image 1 is a int"),
    ],
)
def test_structure_errors_name_the_file(tmp_path: Path, obj, message):
    path = _write_raw(tmp_path / "bad.bin", obj)
    with pytest.raises(BinFormatError, match="bad.bin.*" + message):
        read_bin(path)


def test_undecodable_image_is_named_by_index(tmp_path: Path):
    good = _png(_images(1)[0])
    path = tmp_path / "cfp_fp.bin"
    write_bin(path, [good, good, good, b"\xff\xd8 definitely not a jpeg"], [True, False])
    with pytest.raises(BinFormatError, match=r"cfp_fp\.bin: image 3 \(\d+ bytes\) does not decode"):
        read_bin(path)


def test_not_a_pickle(tmp_path: Path):
    path = tmp_path / "text.bin"
    path.write_text("hello, this is not a pickle\n")
    with pytest.raises(BinFormatError, match=r"text\.bin: not a pickled verification set"):
        read_bin(path)
    truncated = tmp_path / "cut.bin"
    truncated.write_bytes(pickle.dumps(([b"x", b"y"], [True]))[:-5])
    with pytest.raises(BinFormatError, match=r"cut\.bin"):
        read_bin(truncated)
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        read_bin(tmp_path / "missing.bin")


def test_refuses_pickles_that_run_code(tmp_path: Path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = _write_raw(tmp_path / "evil.bin", ([Evil(), b"x"], [True]))
    with pytest.raises(BinFormatError, match=r"evil\.bin: refusing to unpickle global builtins\.print"):
        read_bin(path)


def test_write_bin_validates(tmp_path: Path):
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        write_bin(tmp_path / "w.bin", [b"a", b"b", b"c"], [True])
    with pytest.raises(ValueError, match="image 1 is empty"):
        write_bin(tmp_path / "w.bin", [b"a", b""], [True])
    assert not (tmp_path / "w.bin").exists()
