"""The ``.kolm`` file: a canonical safetensors file carrying its manifest and signatures (docs/formats.md).

Writers produce exactly one byte sequence for a given manifest, tensors and signatures; the strict reader
rejects everything else, so any changed byte is a finding. The manifest and the statement the signatures cover
are :mod:`kolm_audit.artifact.manifest`; signing and verification are :mod:`kolm_audit.artifact.signatures`.

Example::

    >>> import tempfile, pathlib, numpy as np
    >>> from kolm_audit.artifact.manifest import build_manifest, empty_provenance
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> tensors = {"w": np.arange(6, dtype=np.int8).reshape(2, 3)}
    >>> manifest = build_manifest(name="demo", version="1", task={"kind": "embed"},
    ...     architecture={"family": "bert"}, quantization={"scheme": "int8"}, tensors=tensors,
    ...     provenance=empty_provenance(), created="2026-01-01T00:00:00Z")
    >>> art = write_artifact(d / "m.kolm", manifest=manifest, tensors=tensors)
    >>> read_artifact(d / "m.kolm").digest == art.digest
    True
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from kolm_audit._atomic import write_atomic
from kolm_audit.artifact import _safetensors as st
from kolm_audit.artifact.manifest import check_envelopes, check_manifest, le_tensors, tensor_digests
from kolm_audit.canonical import digest_of, jcs, loads_canonical
from kolm_audit.errors import ArtifactError, InputError, naming_file
from kolm_audit.signing import Envelope

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Artifact:
    """A ``.kolm`` file as read: its manifest, signature envelopes (JSON), digest and read-only tensors."""

    path: Path | None
    manifest: dict[str, Any]
    signatures: tuple[dict[str, Any], ...]
    digest: str
    tensors: Mapping[str, np.ndarray]

    @property
    def envelopes(self) -> tuple[Envelope, ...]:
        return tuple(Envelope.from_json(e, file=self._file, field=f"signatures[{i}]")
                     for i, e in enumerate(self.signatures))

    @property
    def _file(self) -> str | None:
        return None if self.path is None else str(self.path)


def write_artifact(path: str | Path, *, manifest: dict[str, Any], tensors: Mapping[str, np.ndarray],
                   signatures: Sequence[dict[str, Any]] = ()) -> Artifact:
    """Write the canonical file atomically (temp file + rename) and return it as read back."""
    path = Path(path)
    check_manifest(manifest, file=str(path))
    le = le_tensors(tensors)
    _compare_tables(manifest["tensors"], {n: (st.dtype_code(a, name=n), tuple(a.shape)) for n, a in le.items()},
                    file=str(path))
    _compare_digests(manifest["tensors"], tensor_digests(le), file=str(path))
    check_envelopes(signatures, manifest, file=str(path))
    metadata = jcs({"manifest": manifest, "signatures": list(signatures)}).decode("utf-8")
    header = st.encode_header(metadata=metadata, tensors=le)
    order = st.data_order((n, st.dtype_code(a, name=n)) for n, a in le.items())
    write_atomic(path, (header, *(memoryview(le[name].reshape(-1).view(np.uint8)) for name in order)),
                 what="artifact")
    return read_artifact(path, check_tensors=False)


def _compare_tables(table: Mapping[str, Any], actual: Mapping[str, tuple[str, tuple[int, ...]]], *,
                    file: str | None) -> None:
    missing = sorted(set(table) - set(actual))
    extra = sorted(set(actual) - set(table))
    differ = sorted(n for n in set(table) & set(actual)
                    if (table[n]["dtype"], tuple(table[n]["shape"])) != actual[n])
    if missing or extra or differ:
        parts = []
        if missing:
            parts.append("missing from the file: " + ", ".join(missing))
        if extra:
            parts.append("not in the manifest: " + ", ".join(extra))
        for n in differ:
            parts.append(f"{n}: manifest {table[n]['dtype']}{table[n]['shape']}, "
                         f"file {actual[n][0]}{list(actual[n][1])}")
        first = (missing or extra or differ)[0]
        raise ArtifactError("tensor table of the manifest does not match the file's tensors: " + "; ".join(parts),
                            file=file, field=f"manifest.tensors.{first}")


def _compare_digests(table: Mapping[str, Any], digests: Mapping[str, str], *, file: str | None) -> None:
    bad = sorted(n for n, d in digests.items() if table[n]["sha256"] != d)
    if bad:
        listing = "; ".join(f"{n}: expected {table[n]['sha256']}, got {digests[n]}" for n in bad[:20])
        more = f" (+{len(bad) - 20} more)" if len(bad) > 20 else ""
        raise ArtifactError(f"{len(bad)} tensor(s) do not match their manifest digest: {listing}{more}",
                            file=file, field=f"tensors.{bad[0]}", expected=table[bad[0]]["sha256"],
                            actual=digests[bad[0]])


def read_artifact(path: str | Path, *, check_tensors: bool = True, progress: Progress | None = None,
                  workers: int | None = None) -> Artifact:
    """Strictly read a ``.kolm`` file. Tensors are read-only arrays over a private memory map.

    With ``check_tensors`` every tensor's sha256 is recomputed (in parallel) and compared to the manifest.
    """
    with naming_file(str(path)):
        return _read(Path(path), check_tensors=check_tensors, progress=progress, workers=workers)


def _read(path: Path, *, check_tensors: bool, progress: Progress | None, workers: int | None) -> Artifact:
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise InputError(f"cannot open artifact ({exc.strerror})", file=name) from None
    try:
        st_ = os.fstat(fd)
        if not stat.S_ISREG(st_.st_mode):
            raise InputError("not a regular file", file=name, expected="a .kolm file")
        if st_.st_size < 8:
            raise ArtifactError("file too short for a safetensors header", file=name, field="header",
                                expected="at least 8 bytes", actual=f"{st_.st_size} bytes")
        try:
            mm = mmap.mmap(fd, st_.st_size, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise InputError(f"cannot map artifact ({exc.strerror})", file=name) from None
        header = st.parse_header(mm, file=name)
        doc = loads_canonical(header.metadata.encode("utf-8"), file=name, field="header.__metadata__.kolm",
                              error=ArtifactError)
        if not isinstance(doc, dict) or set(doc) != {"manifest", "signatures"} or not isinstance(
                doc["signatures"], list):
            raise ArtifactError("malformed kolm metadata", file=name, field="header.__metadata__.kolm",
                                expected='{"manifest": {...}, "signatures": [...]}')
        manifest = doc["manifest"]
        check_manifest(manifest, file=name)
        _compare_tables(manifest["tensors"], {e.name: (e.dtype, e.shape) for e in header.entries}, file=name)
        check_envelopes(doc["signatures"], manifest, file=name)
        if check_tensors:
            _compare_digests(manifest["tensors"],
                             st.hash_ranges(fd, header.entries, workers=workers, progress=progress, file=name),
                             file=name)
    finally:
        os.close(fd)
    tensors = {e.name: np.frombuffer(mm, dtype=st.DTYPES[e.dtype], count=e.nbytes // st.DTYPES[e.dtype].itemsize,
                                     offset=e.start).reshape(e.shape)
               for e in header.entries}
    return Artifact(path=path, manifest=manifest, signatures=tuple(doc["signatures"]), digest=digest_of(manifest),
                    tensors=MappingProxyType(tensors))

