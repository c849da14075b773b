"""MXNet RecordIO, read and written without mxnet.

The on-disk format (dmlc-core ``recordio.h``, mxnet ``recordio.py``):

* every part starts with the magic word ``0xced7230a`` and a little-endian length word
  whose upper 3 bits are a continuation flag (0 whole record, 1 first part, 2 middle
  part, 3 last part) and whose lower 29 bits are the part's byte length;
* the part's bytes follow, and the record is zero-padded to a multiple of 4 bytes;
* the writer splits a payload wherever the magic word sits at a 4-byte aligned offset
  inside it, dropping those 4 bytes; the reader puts the magic word back when it joins the
  parts (so a scan can always resynchronise on the magic word);
* an image record's payload is the ``IfQQ`` header (flag, label, id, id2), then, when
  ``flag > 0``, ``flag`` float32 labels, then the encoded image;
* ``.idx`` files hold one ``key<TAB>byte offset`` line per record.

Readers open their file lazily and re-open it after a fork, so a dataset built in the
parent process can be handed to DataLoader workers without sharing one file offset.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "MAGIC",
    "HeaderScan",
    "RecordHeader",
    "RecordIOError",
    "IndexedRecordReader",
    "RecordReader",
    "RecordWriter",
    "IndexedRecordWriter",
    "encode_record",
    "index_path",
    "pack",
    "unpack",
    "read_index",
    "check_index_fits",
    "read_index_arrays",
    "record_where",
    "scan_headers",
]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, length word
_LENGTH_BITS = 29
_MAX_RECORD = 1 << _LENGTH_BITS
_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2 (mxnet's IRHeader)
# The same frame + header as one numpy row, for reading the start of many records at once.
_FRAME_HEADER = np.dtype(
    [("magic", "<u4"), ("length_word", "<u4"), ("flag", "<u4"), ("label", "<f4"), ("id", "<u8"), ("id2", "<u8")]
)
assert _FRAME_HEADER.itemsize == _FRAME.size + _HEADER.size

# Continuation flags of the length word.
_WHOLE, _FIRST, _MIDDLE, _LAST = 0, 1, 2, 3


def _length_word(cflag: int, length: int) -> int:
    """The frame's length word: continuation flag in the upper 3 bits, part length below."""
    return (cflag << _LENGTH_BITS) | length


def _split_length_word(word):
    """``(continuation flag, part length)`` of a length word (an int or a numpy array of them)."""
    return word >> _LENGTH_BITS, word & (_MAX_RECORD - 1)


def record_where(path: str | os.PathLike, key: int | None, offset: int) -> str:
    """How every error names a record: ``"<file>: record key K at byte offset N"``."""
    return f"{path}: {'record' if key is None else f'record key {key}'} at byte offset {offset}"


class RecordIOError(ValueError):
    """A RecordIO file or index is malformed; the message names file, key and byte offset."""


@dataclass(frozen=True)
class RecordHeader:
    """mxnet's ``IRHeader``: ``label`` is a float, or a float32 array when ``flag > 0``."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int = 0


def _align4(n: int) -> int:
    return (n + 3) & ~3


# ----------------------------------------------------------------------------- payloads


def pack(header: RecordHeader, payload: bytes = b"") -> bytes:
    """Serialise ``header`` and ``payload`` as ``mxnet.recordio.pack`` does.

    A scalar ``label`` forces ``flag = 0``; an array label sets ``flag`` to its size and
    stores the float32 values between the header and the payload.
    """
    label = header.label
    if np.ndim(label) == 0:
        head = _HEADER.pack(0, float(label), header.id, header.id2)
        return head + bytes(payload)
    values = np.ascontiguousarray(label, dtype="<f4").ravel()
    head = _HEADER.pack(values.size, 0.0, header.id, header.id2)
    return head + values.tobytes() + bytes(payload)


def unpack(record: bytes | memoryview) -> tuple[RecordHeader, memoryview]:
    """Split a record payload into its header and the remaining bytes (the encoded image).

    Returns a ``memoryview`` into ``record`` so that decoding needs no copy.
    """
    view = memoryview(record)
    if len(view) < _HEADER.size:
        raise RecordIOError(f"record of {len(view)} bytes is shorter than the {_HEADER.size}-byte IfQQ header")
    flag, label, rid, rid2 = _HEADER.unpack_from(view, 0)
    body = view[_HEADER.size :]
    if flag > 0:
        nbytes = 4 * flag
        if len(body) < nbytes:
            raise RecordIOError(f"header flag {flag} asks for {nbytes} label bytes but only {len(body)} follow")
        label = np.frombuffer(body[:nbytes], dtype="<f4").astype(np.float32)
        body = body[nbytes:]
    return RecordHeader(flag, label, rid, rid2), body


# ----------------------------------------------------------------------------- framing


def encode_record(payload: bytes | memoryview) -> bytes:
    """Frame one payload exactly as dmlc-core's ``RecordIOWriter::WriteRecord`` does."""
    data = memoryview(payload).cast("B")
    size = len(data)
    if size >= _MAX_RECORD:
        raise RecordIOError(f"record of {size} bytes exceeds the RecordIO limit of {_MAX_RECORD - 1} bytes")
    parts: list[bytes] = []
    start = 0
    # The magic word may only be escaped at aligned offsets; numpy finds them in one pass.
    aligned = np.frombuffer(data[: size & ~3], dtype="<u4")
    for word in np.flatnonzero(aligned == MAGIC):
        pos = int(word) * 4
        cflag = _FIRST if start == 0 else _MIDDLE
        parts.append(_FRAME.pack(MAGIC, _length_word(cflag, pos - start)))
        parts.append(data[start:pos].tobytes())
        start = pos + 4
    cflag = _LAST if start else _WHOLE
    parts.append(_FRAME.pack(MAGIC, _length_word(cflag, size - start)))
    parts.append(data[start:].tobytes())
    parts.append(b"\0" * (_align4(size) - size))
    return b"".join(parts)


def read_index_arrays(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``.idx`` file into two int64 arrays ``(keys, offsets)`` in file order.

    MS1M-size indexes hold millions of lines: numpy's C parser, not a Python loop, and two
    arrays (16 bytes a record) rather than a dict of Python ints, which costs several times
    more and is copied page by page into every forked DataLoader worker as reference counts change.
    """
    path = Path(path)
    data = path.read_bytes()
    if not data.strip():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Anything beyond digits, '-', TAB and LF (spaces, CR, letters) goes through the
    # line-by-line check, which accepts exactly what mxnet writes and names the bad line.
    if not data.translate(None, b"0123456789-\t\n"):
        try:
            table = np.loadtxt(io.BytesIO(data), dtype=np.int64, delimiter="\t", ndmin=2)
        except ValueError:
            table = None
        if table is not None and table.shape[1] == 2:
            keys, offsets = np.ascontiguousarray(table[:, 0]), np.ascontiguousarray(table[:, 1])
            # mxnet's writers emit ascending keys; only other orders pay for np.unique.
            distinct = keys.size < 2 or (keys[1:] > keys[:-1]).all() or np.unique(keys).size == keys.size
            if (offsets >= 0).all() and distinct:
                return keys, offsets
    return _read_index_lines(path)


def _read_index_lines(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Line-by-line ``.idx`` parser: slow, but its errors name the line and its byte offset."""
    index: dict[int, int] = {}
    position = 0
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            line_start, position = position, position + len(raw)
            line = raw.decode("ascii", errors="replace").strip()
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0].lstrip("-").isdigit() or not fields[1].isdigit():
                raise RecordIOError(
                    f"{path}:{lineno} (byte offset {line_start}): expected 'key<TAB>offset', got {line[:80]!r}"
                )
            key, offset = int(fields[0]), int(fields[1])
            if abs(key) >= 1 << 63 or offset >= 1 << 63:
                raise RecordIOError(f"{path}:{lineno} (byte offset {line_start}): {line[:80]!r} overflows 64 bits")
            if key in index:
                raise RecordIOError(f"{path}:{lineno} (byte offset {line_start}): key {key} appears twice")
            index[key] = offset
    keys = np.fromiter(index.keys(), dtype=np.int64, count=len(index))
    offsets = np.fromiter(index.values(), dtype=np.int64, count=len(index))
    return keys, offsets


def read_index(path: str | os.PathLike) -> dict[int, int]:
    """Read a ``.idx`` file into ``{key: byte offset}`` (insertion order = file order)."""
    keys, offsets = read_index_arrays(path)
    return dict(zip(keys.tolist(), offsets.tolist(), strict=True))


def index_path(rec_path: Path, idx_path: str | os.PathLike | None = None) -> Path:
    """``idx_path``, by default the ``.idx`` next to ``rec_path``; ``FileNotFoundError`` naming both when absent."""
    idx = Path(idx_path) if idx_path is not None else rec_path.with_suffix(".idx")
    if not idx.is_file():
        raise FileNotFoundError(f"RecordIO index not found: {idx} (next to {rec_path})")
    return idx


def check_index_fits(
    idx_path: str | os.PathLike, rec_path: str | os.PathLike, rec_size: int, keys: np.ndarray, offsets: np.ndarray
) -> None:
    """Raise :class:`RecordIOError` naming the first key whose offset lies past the end of the ``.rec`` file."""
    past_end = np.flatnonzero(offsets >= rec_size)
    if past_end.size:
        first = int(past_end[0])
        raise RecordIOError(
            f"{idx_path}: key {int(keys[first])} points at byte offset {int(offsets[first])}, past the end of "
            f"{rec_path} ({rec_size} bytes); {past_end.size} such keys: the index does not belong to this file"
        )


# ----------------------------------------------------------------------------- reading


class RecordReader:
    """Random and sequential access to the records of one ``.rec`` file.

    The file descriptor is opened on first use and re-opened in a forked child, so one
    reader object can live in a Dataset that DataLoader workers inherit. Reads use
    ``os.pread``, which carries no shared file position.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"RecordIO file not found: {self.path}")
        self.size = self.path.stat().st_size
        self._fd: int | None = None
        self._pid: int | None = None

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            # After fork the inherited descriptor is the parent's; leave it to the parent.
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def close(self) -> None:
        """Close this process's descriptor (a no-op when none is open)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None
        self._pid = None

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass

    def __getstate__(self) -> dict:
        # Never pickle a descriptor (spawned workers must open their own).
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_pid"] = None
        return state

    def _error(self, key: int | None, offset: int, what: str) -> RecordIOError:
        return RecordIOError(f"{record_where(self.path, key, offset)}: {what}")

    def read_at(self, offset: int, key: int | None = None) -> tuple[bytes, int]:
        """Read the record starting at ``offset``; return its payload and the next offset.

        ``key`` is only used to name the record in error messages.
        """
        fd = self._descriptor()
        if offset < 0 or offset >= self.size:
            raise self._error(key, offset, f"offset is outside the file ({self.size} bytes)")
        chunks: list[bytes] = []
        pos = offset
        while True:
            frame = os.pread(fd, _FRAME.size, pos)
            if len(frame) < _FRAME.size:
                raise self._error(key, offset, f"truncated: file ends inside the frame header at byte {pos}")
            magic, word = _FRAME.unpack(frame)
            if magic != MAGIC:
                raise self._error(key, offset, f"bad magic 0x{magic:08x} at byte {pos} (expected 0x{MAGIC:08x})")
            cflag, length = _split_length_word(word)
            allowed = (_WHOLE, _FIRST) if not chunks else (_MIDDLE, _LAST)
            if cflag not in allowed:
                raise self._error(key, offset, f"continuation flag {cflag} at byte {pos} is out of sequence")
            body = os.pread(fd, length, pos + _FRAME.size)
            if len(body) < length:
                raise self._error(
                    key, offset, f"truncated: part at byte {pos} declares {length} bytes, file has {len(body)}"
                )
            chunks.append(body)
            pos += _FRAME.size + _align4(length)
            if cflag in (_WHOLE, _LAST):
                break
            chunks.append(_MAGIC_BYTES)
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), pos

    def read_image_record(
        self, offset: int, key: int, error: type[RecordIOError] = RecordIOError
    ) -> tuple[RecordHeader, memoryview]:
        """Read and :func:`unpack` the record at ``offset``; an unpack error becomes ``error`` naming the record."""
        payload, _ = self.read_at(offset, key)
        try:
            return unpack(payload)
        except RecordIOError as err:
            raise error(f"{record_where(self.path, key, offset)}: {err}") from None

    def scan(self) -> Iterator[tuple[int, bytes]]:
        """Yield ``(offset, payload)`` for every record, in file order (no index needed)."""
        offset = 0
        while offset < self.size:
            payload, nxt = self.read_at(offset)
            yield offset, payload
            offset = nxt


class IndexedRecordReader(RecordReader):
    """A ``.rec`` file with its ``.idx``: ``read(key)`` returns one record's payload."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        super().__init__(rec_path)
        self.idx_path = index_path(self.path, idx_path)
        keys, offsets = read_index_arrays(self.idx_path)
        check_index_fits(self.idx_path, self.path, self.size, keys, offsets)
        self.index = dict(zip(keys.tolist(), offsets.tolist(), strict=True))

    @property
    def keys(self) -> list[int]:
        """Record keys in index order."""
        return list(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: int) -> bool:
        return key in self.index

    def read(self, key: int) -> bytes:
        """Return the payload stored under ``key``."""
        try:
            offset = self.index[key]
        except KeyError:
            raise KeyError(f"{self.idx_path}: no record with key {key}") from None
        return self.read_at(offset, key)[0]


# ----------------------------------------------------------------------------- header scan

_GATHER_CHUNK = 1 << 16  # records per vectorised gather: bounds the (chunk, width) index temporaries


@dataclass
class HeaderScan:
    """Per-record header fields from :func:`scan_headers`; ``labels[:, j]`` is NaN where a record has no j-th label."""

    flags: np.ndarray  # uint32
    labels: np.ndarray  # float32 (n, n_labels): the scalar label when flag == 0, else the label array
    body_bytes: np.ndarray  # int64: bytes after the header and labels (the encoded image)
    bad: dict[int, str]  # position -> error message (only filled when errors are collected)


def _parse_header_rows(rows: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Frame + ``IfQQ`` + label bytes, one record a row -> flags, labels, image bytes, and which rows are whole.

    A row is usable when it starts with the magic word, is a whole (unsplit) record and is
    long enough for its header and labels; the caller reads the others the slow way.
    """
    head = rows[:, : _FRAME_HEADER.itemsize].copy().view(_FRAME_HEADER)[:, 0]
    flags = head["flag"]
    cflag, length = _split_length_word(head["length_word"].astype(np.int64))
    label_bytes = 4 * flags.astype(np.int64)
    whole = (head["magic"] == MAGIC) & (cflag == _WHOLE) & (length >= _HEADER.size + label_bytes)
    array_labels = rows[:, _FRAME_HEADER.itemsize :].copy().view("<f4")
    present = np.arange(n_labels) < np.minimum(flags, n_labels).astype(np.int64)[:, None]
    labels = np.where(present, array_labels, np.float32(np.nan))
    labels[:, 0] = np.where(flags == 0, head["label"], labels[:, 0])
    return flags, labels, length - _HEADER.size - label_bytes, whole


def scan_headers(
    reader: RecordReader, keys: np.ndarray, offsets: np.ndarray, n_labels: int, collect_errors: bool
) -> HeaderScan:
    """Read the frame and ``IfQQ`` header (+ up to ``n_labels`` labels) of each record.

    The common case (a whole record with magic and enough bytes) is gathered from a memory
    map with numpy; anything else (records split by the writer, short records at the end
    of the file, corruption) goes through ``RecordReader.read_at``, whose errors name the
    file, key and byte offset. With ``collect_errors`` those errors are returned instead.
    """
    n = keys.size
    width = _FRAME_HEADER.itemsize + 4 * n_labels
    flags = np.zeros(n, np.uint32)
    labels = np.full((n, n_labels), np.nan, np.float32)
    body = np.zeros(n, np.int64)
    fast = np.zeros(n, bool)
    if n and reader.size >= width:
        columns = np.arange(width, dtype=np.int64)
        with open(reader.path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            data = np.frombuffer(mapped, dtype=np.uint8)
            try:
                for start in range(0, n, _GATHER_CHUNK):
                    chunk = slice(start, min(start + _GATHER_CHUNK, n))
                    fits = offsets[chunk] + width <= reader.size
                    rows = np.zeros((fits.size, width), np.uint8)
                    rows[fits] = data[offsets[chunk][fits, None] + columns]
                    flags[chunk], labels[chunk], body[chunk], whole = _parse_header_rows(rows, n_labels)
                    fast[chunk] = fits & whole
            finally:
                del data  # the map cannot close while numpy still holds its buffer
    bad: dict[int, str] = {}
    for position in np.flatnonzero(~fast).tolist():
        key, offset = int(keys[position]), int(offsets[position])
        try:
            header, image = reader.read_image_record(offset, key)
        except RecordIOError as err:
            if not collect_errors:
                raise
            bad[position] = str(err)
            continue
        flags[position] = header.flag
        values = np.atleast_1d(np.asarray(header.label, np.float32))[:n_labels]
        labels[position] = np.nan
        labels[position, : values.size] = values
        body[position] = len(image)
    return HeaderScan(flags, labels, body, bad)


# ----------------------------------------------------------------------------- writing


class RecordWriter:
    """Append records to a ``.rec`` file, framed as mxnet frames them."""

    def __init__(self, rec_path: str | os.PathLike):
        self.path = Path(rec_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rec = open(self.path, "wb")

    def tell(self) -> int:
        """Byte offset where the next record will start."""
        return self._rec.tell()

    def write(self, payload: bytes | memoryview) -> int:
        """Write one payload; return the byte offset of its record."""
        offset = self._rec.tell()
        self._rec.write(encode_record(payload))
        return offset

    def close(self) -> None:
        """Flush and close the file."""
        self._rec.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class IndexedRecordWriter(RecordWriter):
    """Write ``.rec`` + ``.idx`` as ``mxnet.recordio.MXIndexedRecordIO(..., 'w')`` does."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        super().__init__(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.path.with_suffix(".idx")
        self._idx = open(self.idx_path, "w", encoding="ascii", newline="\n")
        self._keys: set[int] = set()

    def write_key(self, key: int, payload: bytes | memoryview) -> int:
        """Write ``payload`` under ``key``; return its byte offset."""
        if key in self._keys:
            raise RecordIOError(f"{self.idx_path}: key {key} written twice")
        self._keys.add(key)
        offset = self.write(payload)
        self._idx.write(f"{key}\t{offset}\n")
        return offset

    def close(self) -> None:
        """Flush and close both files."""
        super().close()
        self._idx.close()
