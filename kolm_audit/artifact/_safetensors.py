"""Canonical safetensors layout for ``.kolm`` files: header encoding, strict header parsing, hashing.

The file is ``u64 little-endian N`` ‖ ``N header bytes`` ‖ ``data``. The header is the RFC 8785 (JCS)
encoding of ``{"__metadata__": {"kolm": <string>}, "<tensor>": {"data_offsets": [b, e], "dtype": D,
"shape": [...]}, ...}`` followed by ASCII spaces up to a multiple of 8 bytes. Tensor data is laid out
in :func:`data_order`: itemsize descending, then tensor name by UTF-8 bytes ascending — every tensor is
naturally aligned and the data section has no gaps and no bytes after the last tensor.

    >>> import numpy as np
    >>> header = encode_header(metadata="{}", tensors={"w": np.zeros((2, 2), np.int8)})
    >>> int.from_bytes(header[:8], "little"), len(header) % 8
    (88, 0)
    >>> header[8:].rstrip()[30:]
    b'"w":{"data_offsets":[0,4],"dtype":"I8","shape":[2,2]}}'
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from kolm_audit.canonical import DIGEST_PREFIX, jcs, loads_strict
from kolm_audit.errors import ArtifactError, InputError

#: safetensors dtype code -> little-endian numpy dtype. BF16 is not offered: numpy has no bfloat16.
DTYPES: dict[str, np.dtype] = {
    "I8": np.dtype("<i1"), "U8": np.dtype("<u1"), "I16": np.dtype("<i2"), "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4"),
}
FLOAT_DTYPES = frozenset({"F16", "F32"})
HEADER_CAP = 16 * 1024 * 1024   #: largest header a reader accepts (bytes), checked before reading it
MAX_NDIM = 8
MAX_DIM = 1 << 48
MAX_NAME = 1024
METADATA_KEY = "kolm"
_CHUNK = 8 * 1024 * 1024


def dtype_code(array: np.ndarray, *, name: str) -> str:
    for code, dtype in DTYPES.items():
        if array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize:
            return code
    raise ArtifactError("tensor dtype not allowed in a .kolm", field=f"tensors.{name}",
                        expected=", ".join(DTYPES), actual=str(array.dtype))


def as_le_contiguous(array: np.ndarray, *, name: str) -> np.ndarray:
    """The array as C-contiguous little-endian data (what is stored and hashed)."""
    code = dtype_code(array, name=name)
    return np.array(array, dtype=DTYPES[code], order="C", copy=None)


def tensor_digest(array: np.ndarray, *, name: str) -> str:
    data = as_le_contiguous(array, name=name)
    return DIGEST_PREFIX + hashlib.sha256(data.reshape(-1).view(np.uint8)).hexdigest()


def data_order(entries: Iterable[tuple[str, str]]) -> list[str]:
    """Tensor names (given ``(name, dtype_code)``) in storage order: itemsize desc, then UTF-8 name asc."""
    return [n for n, c in sorted(entries, key=lambda e: (-DTYPES[e[1]].itemsize, e[0].encode("utf-8")))]


def check_name(name: object, *, file: str | None = None) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or name == "__metadata__":
        raise ArtifactError("bad tensor name", file=file, field="header",
                            expected=f"a non-empty string of at most {MAX_NAME} characters", actual=repr(name)[:80])
    return name


def encode_header(*, metadata: str, tensors: Mapping[str, np.ndarray]) -> bytes:
    """The 8-byte length prefix and the padded canonical header for ``tensors`` (no data)."""
    codes = {check_name(n): dtype_code(a, name=n) for n, a in tensors.items()}
    header: dict[str, object] = {"__metadata__": {METADATA_KEY: metadata}}
    offset = 0
    for name in data_order(codes.items()):
        array = tensors[name]
        size = int(array.size) * DTYPES[codes[name]].itemsize
        header[name] = {"data_offsets": [offset, offset + size], "dtype": codes[name],
                        "shape": [int(d) for d in array.shape]}
        offset += size
    body = jcs(header)
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int   # absolute file offset
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    metadata: str
    entries: tuple[TensorEntry, ...]   # in data order
    data_start: int
    file_size: int


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_header(buf: mmap.mmap | bytes, *, file: str | None = None) -> Header:
    """Strictly parse the header of ``buf`` (the whole file); reads nothing past the declared header."""
    size = len(buf)
    if size < 8:
        raise ArtifactError("file too short for a safetensors header", file=file, field="header",
                            expected="at least 8 bytes", actual=f"{size} bytes")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > HEADER_CAP or n > size - 8:
        raise ArtifactError("declared header length is impossible", file=file, field="header.length",
                            expected=f"at most {min(HEADER_CAP, size - 8)} bytes", actual=f"{n} bytes")
    raw = bytes(buf[8:8 + n])
    doc = loads_strict(raw, file=file, field="header", error=ArtifactError)
    if not isinstance(doc, dict):
        raise ArtifactError("header is not a JSON object", file=file, field="header")
    meta = doc.get("__metadata__")
    if not isinstance(meta, dict) or set(meta) != {METADATA_KEY} or not isinstance(meta[METADATA_KEY], str):
        raise ArtifactError("header __metadata__ must hold exactly one string key 'kolm'", file=file,
                            field="header.__metadata__", expected='{"kolm": "<JCS string>"}')
    data_start = 8 + n
    data_len = size - data_start
    entries = []
    for name, spec in doc.items():
        if name == "__metadata__":
            continue
        check_name(name, file=file)
        where = f"header.{name}"
        if not isinstance(spec, dict) or set(spec) != {"data_offsets", "dtype", "shape"}:
            raise ArtifactError("malformed tensor entry", file=file, field=where,
                                expected="exactly the keys data_offsets, dtype, shape")
        code, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
        if code not in DTYPES:
            raise ArtifactError("tensor dtype not allowed", file=file, field=f"{where}.dtype",
                                expected=", ".join(DTYPES), actual=repr(code)[:40])
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or not all(_int(d) and 0 <= d <= MAX_DIM for d in shape)):
            raise ArtifactError("bad tensor shape", file=file, field=f"{where}.shape",
                                expected=f"at most {MAX_NDIM} integers in [0, 2^48]", actual=repr(shape)[:80])
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_int(o) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_len):
            raise ArtifactError("bad data_offsets", file=file, field=f"{where}.data_offsets",
                                expected=f"[begin, end] with 0 <= begin <= end <= {data_len}",
                                actual=repr(offsets)[:80])
        count = 1
        for d in shape:
            count *= d   # Python ints: no overflow (at most 8 dims of at most 2^48)
        if count * DTYPES[code].itemsize != offsets[1] - offsets[0]:
            raise ArtifactError("shape does not match the byte range", file=file, field=f"{where}.shape",
                                expected=f"{offsets[1] - offsets[0]} bytes", actual=f"shape {shape} of {code}")
        entries.append(TensorEntry(name=name, dtype=code, shape=tuple(shape),
                                   start=data_start + offsets[0], end=data_start + offsets[1]))
    by_name = {e.name: e for e in entries}
    ordered = [by_name[n] for n in data_order((e.name, e.dtype) for e in entries)]
    cursor = data_start
    for entry in ordered:
        if entry.start != cursor:
            raise ArtifactError("tensor data is not laid out contiguously in the documented order", file=file,
                                field=f"header.{entry.name}.data_offsets", expected=f"begin {cursor - data_start}",
                                actual=f"begin {entry.start - data_start}")
        cursor = entry.end
    if cursor != size:
        raise ArtifactError("bytes after the last tensor", file=file, field="data",
                            expected=f"file size {cursor}", actual=f"file size {size}")
    canonical = jcs(doc)
    canonical += b" " * (-len(canonical) % 8)
    if canonical != raw:
        raise ArtifactError("header is not in canonical form (JCS, space-padded to a multiple of 8)",
                            file=file, field="header")
    return Header(metadata=meta[METADATA_KEY], entries=tuple(ordered), data_start=data_start, file_size=size)


def hash_ranges(fd: int, entries: Iterable[TensorEntry], *, workers: int | None = None,
                progress: Callable[[int], None] | None = None, file: str | None = None) -> dict[str, str]:
    """``"sha256:<hex>"`` of each entry's bytes, hashed in parallel (threads; hashlib drops the GIL).

    Each worker reads with ``os.preadv`` into its own reusable buffer, so memory stays bounded.
    """
    items = sorted(entries, key=lambda e: -e.nbytes)
    workers = workers or max(1, min(len(items), os.cpu_count() or 1))

    def one(entry: TensorEntry) -> tuple[str, str]:
        hasher = hashlib.sha256()
        buf = bytearray(min(_CHUNK, max(entry.nbytes, 1)))
        view = memoryview(buf)
        pos = entry.start
        while pos < entry.end:
            want = min(len(buf), entry.end - pos)
            try:
                got = os.preadv(fd, [view[:want]], pos)
            except OSError as exc:
                raise InputError(f"cannot read tensor data ({exc.strerror})", file=file,
                                 field=f"tensors.{entry.name}") from None
            if got <= 0:
                raise ArtifactError("file shrank while reading", file=file, field=f"tensors.{entry.name}")
            hasher.update(view[:got])
            pos += got
            if progress is not None:
                progress(got)
        return entry.name, DIGEST_PREFIX + hasher.hexdigest()

    if workers == 1:
        return dict(one(e) for e in items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(one, items))
