"""An exported log bundle, read strictly (the portable form of a receipt log; format: docs/formats.md).

A bundle (``kolm-audit log export``) is a directory::

    manifest.json        kolm.log-bundle/1: origin, size, file names (schemas/log-bundle.schema.json)
    receipts.jsonl       one canonical JSON leaf per line, index = line number (0-based)
    checkpoints/         every stored checkpoint, as C2SP signed-note files NNNNNN.note
    proofs.json          an RFC 6962 inclusion proof of every leaf against the latest checkpoint

An *excerpt* (``"excerpt": true`` in the manifest, :mod:`kolm_audit.log.excerpt`) holds only some leaves: line k of
``receipts.jsonl`` is the leaf at ``proofs.json``'s ``proofs[k].index``, and ``size`` is the log size they are
proven against.

It is written by :func:`kolm_audit.log.source.export_bundle` and read, like a database, through
:func:`kolm_audit.log.source.open_log_source`.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from kolm_audit.canonical import loads_strict
from kolm_audit.errors import InputError, KolmError, LogError
from kolm_audit.schemas import validate

BUNDLE_SCHEMA = "kolm.log-bundle/1"
PROOFS_SCHEMA = "kolm.log-proofs/1"


def _missing(path: Path, exc: OSError) -> KolmError:
    """A file the bundle's manifest lists but that cannot be read: missing evidence is a finding."""
    if isinstance(exc, FileNotFoundError):
        return LogError("a file the bundle's manifest lists is missing", file=str(path))
    return InputError(f"cannot read bundle file ({exc.strerror})", file=str(path))


def _read_json(path: Path, name: str) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _missing(path, exc) from None
    doc = loads_strict(data, file=str(path), error=LogError)
    validate(doc, name, source=str(path))
    return doc


class BundleSource:
    """An exported bundle directory (strictly read: one canonical JSON leaf per ``\\n``-terminated line)."""

    kind: Literal["bundle"] = "bundle"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest = _read_json(self.path / "manifest.json", "log-bundle")
        self.origin = self.manifest["origin"]
        self.excerpt: bool = self.manifest.get("excerpt", False)
        self._offsets: array | None = None
        self._indices: list[int] | None = None

    @property
    def _receipts(self) -> Path:
        return self.path / self.manifest["receipts"]

    def _lines(self) -> Iterator[bytes]:
        try:
            with self._receipts.open("rb") as fh:
                for index, line in enumerate(fh):
                    if not line.endswith(b"\n"):
                        raise LogError("receipts file must end with a newline", file=str(self._receipts),
                                       field=f"leaf {index}")
                    yield line[:-1]
        except OSError as exc:
            raise _missing(self._receipts, exc) from None

    def _index(self) -> array:
        if self._offsets is None:
            offsets, pos = array("q", [0]), 0
            for line in self._lines():
                pos += len(line) + 1
                offsets.append(pos)
            self._offsets = offsets
        return self._offsets

    def _leaf_indices(self) -> list[int]:
        """An excerpt's log index of each line: the index its proof names."""
        if self._indices is None:
            doc = self.proofs()
            self._indices = [] if doc is None else [entry["index"] for entry in doc["proofs"]]
        return self._indices

    def size(self) -> int:
        """Leaves in the log: the lines of ``receipts.jsonl``, or for an excerpt the size its proofs are against."""
        return self.manifest["size"] if self.excerpt else len(self._index()) - 1

    def iter_leaves(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        if not self.excerpt:
            for index, line in enumerate(self._lines()):
                if index >= start:
                    yield index, line
            return
        indices = self._leaf_indices()
        for line_no, line in enumerate(self._lines()):
            if line_no >= len(indices):
                raise LogError("excerpt leaf without an inclusion proof", file=str(self._receipts),
                               field=f"line {line_no + 1}", expected=f"{len(indices)} lines (one per proof)")
            if indices[line_no] >= start:
                yield indices[line_no], line

    def leaf(self, index: int) -> bytes:
        offsets = self._index()
        line_no = index
        if self.excerpt:
            indices = self._leaf_indices()
            line_no = bisect.bisect_left(indices, index)
            if line_no >= len(indices) or indices[line_no] != index:
                line_no = -1
        if not 0 <= line_no < len(offsets) - 1:
            raise LogError("no such leaf" + (" in this excerpt" if self.excerpt else ""), file=str(self._receipts),
                           field=f"leaf {index}")
        with self._receipts.open("rb") as fh:
            fh.seek(offsets[line_no])
            return fh.read(offsets[line_no + 1] - offsets[line_no] - 1)

    def checkpoints(self) -> list[tuple[str, str]]:
        out = []
        for name in self.manifest["checkpoints"]:
            file = self.path / name
            try:
                out.append((str(file), file.read_bytes().decode("utf-8")))
            except OSError as exc:
                raise _missing(file, exc) from None
            except UnicodeDecodeError:
                raise LogError("checkpoint is not UTF-8", file=str(file)) from None
        return out

    def proofs(self) -> dict[str, Any] | None:
        name = self.manifest.get("proofs")
        return None if name is None else _read_json(self.path / name, "log-proofs")

    def close(self) -> None:
        self._offsets = None
        self._indices = None

    def __enter__(self) -> BundleSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
