"""Format and pixel size of an encoded image, read from its header without decoding it.

The server checks ``width * height`` against its pixel limit before handing the bytes to
the decoder: a 50 KB PNG can claim 50,000 x 50,000 pixels (a decompression bomb) and would
need 7.5 GB once decoded. Only the four formats the server accepts are recognised (JPEG,
PNG, WebP, BMP); anything else is refused before it reaches a decoder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["ImageHeader", "read_header"]

# JPEG start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the
# range but are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field.
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])


@dataclass(frozen=True)
class ImageHeader:
    """``format`` ("jpeg", "png", "webp", "bmp"), ``width`` and ``height`` in pixels."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes) -> ImageHeader:
    """The format and size of an encoded JPEG, PNG, WebP or BMP image.

    Raises ``ValueError`` saying why when the bytes are none of these formats or the
    header is cut short or malformed.
    """
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data[:2] == b"BM":
        return _bmp(data)
    raise ValueError(f"not a JPEG, PNG, WebP or BMP file (first bytes {data[:8].hex() or 'none'})")


def _need(data: bytes, end: int, what: str) -> None:
    if len(data) < end:
        raise ValueError(f"{what} header cut short ({len(data)} bytes)")


def _jpeg(data: bytes) -> ImageHeader:
    pos = 2
    while True:
        _need(data, pos + 4, "JPEG")
        if data[pos] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {pos}, found 0x{data[pos]:02x}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            raise ValueError("JPEG without a frame header before its image data")
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            raise ValueError(f"JPEG segment at byte {pos} has invalid length {length}")
        if marker in _SOF_MARKERS:
            _need(data, pos + 9, "JPEG")
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return ImageHeader("jpeg", width, height)
        pos += 2 + length


def _png(data: bytes) -> ImageHeader:
    _need(data, 24, "PNG")
    if data[12:16] != b"IHDR":
        raise ValueError("PNG does not start with an IHDR chunk")
    width, height = struct.unpack(">II", data[16:24])
    return ImageHeader("png", width, height)


def _webp(data: bytes) -> ImageHeader:
    _need(data, 30, "WebP")
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: key frame start code, then 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError("WebP VP8 chunk without a key frame start code")
        width, height = struct.unpack("<HH", data[26:30])
        return ImageHeader("webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":  # lossless: signature 0x2f, then 14-bit (size - 1) fields
        if data[20] != 0x2F:
            raise ValueError("WebP VP8L chunk without its signature byte")
        bits = int.from_bytes(data[21:25], "little")
        return ImageHeader("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":  # extended: 24-bit (size - 1) fields of the canvas
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("webp", width, height)
    raise ValueError(f"WebP with unknown first chunk {chunk!r}")


def _bmp(data: bytes) -> ImageHeader:
    _need(data, 18, "BMP")
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == 12:  # BITMAPCOREHEADER: 16-bit unsigned sizes
        _need(data, 22, "BMP")
        width, height = struct.unpack("<HH", data[18:22])
    elif dib_size >= 40:  # BITMAPINFOHEADER and later: signed, height < 0 means top-down
        _need(data, 26, "BMP")
        width, height = struct.unpack("<ii", data[18:26])
        height = abs(height)
    else:
        raise ValueError(f"BMP with unknown header size {dib_size}")
    if width <= 0:
        raise ValueError(f"BMP with width {width}")
    return ImageHeader("bmp", width, height)
