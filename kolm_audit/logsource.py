"""Read a receipt log the same way from its SQLite database or from an exported bundle directory.

A bundle (``kolm-audit log export``) is a directory::

    manifest.json        kolm.log-bundle/1: origin, size, file names (schemas/log-bundle.schema.json)
    receipts.jsonl       one canonical JSON leaf per line, index = line number (0-based)
    checkpoints/         every stored checkpoint, as C2SP signed-note files NNNNNN.note
    proofs.json          an RFC 6962 inclusion proof of every leaf against the latest checkpoint

Verification and replay read either form through :func:`open_log_source`::

    >>> import tempfile, pathlib
    >>> from kolm_audit.logdb import ReceiptLog
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with ReceiptLog.open(d / "r.db", create=True, origin="example.org/log") as log:
    ...     _ = log.append(lambda i: b'{"i":%d}' % i)
    >>> with open_log_source(d / "r.db") as src:
    ...     list(src.iter_leaves())
    [(0, b'{"i":0}')]
"""

from __future__ import annotations

import json
import sqlite3
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

from kolm_audit.canonical import loads_strict
from kolm_audit.checkpoint import parse_checkpoint
from kolm_audit.errors import InputError, LogError
from kolm_audit.logdb import LOG_SCHEMA
from kolm_audit.merkle import MemoryTree, leaf_hash
from kolm_audit.schemas import validate

BUNDLE_SCHEMA = "kolm.log-bundle/1"
PROOFS_SCHEMA = "kolm.log-proofs/1"
_SQLITE_MAGIC = b"SQLite format 3\x00"


class LogSource(Protocol):
    """What verification and replay need from a log, wherever it is stored."""

    kind: Literal["database", "bundle"]
    path: Path
    origin: str

    def size(self) -> int: ...
    def iter_leaves(self, start: int = 0) -> Iterator[tuple[int, bytes]]: ...
    def leaf(self, index: int) -> bytes: ...
    def checkpoints(self) -> list[tuple[str, str]]: ...  # (where it came from, note text)
    def close(self) -> None: ...
    def __enter__(self) -> LogSource: ...
    def __exit__(self, *exc: object) -> None: ...


class DatabaseSource:
    """A read-only snapshot of a receipt log database (one read transaction for the source's lifetime)."""

    kind: Literal["database"] = "database"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with self.path.open("rb") as fh:
                magic = fh.read(16)
        except OSError as exc:
            raise InputError(f"cannot read receipt log ({exc.strerror})", file=str(self.path)) from None
        if magic != _SQLITE_MAGIC:
            raise InputError("not an SQLite receipt log", file=str(self.path), expected="SQLite database")
        try:
            self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("BEGIN")
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise InputError(f"not a receipt log ({exc})", file=str(self.path)) from None
        if meta.get("schema") != LOG_SCHEMA or "origin" not in meta:
            raise InputError("unknown receipt log schema", file=str(self.path), field="meta.schema",
                             expected=LOG_SCHEMA, actual=meta.get("schema"))
        self.origin: str = meta["origin"]

    def size(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM leaves").fetchone()[0])

    def iter_leaves(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        query = "SELECT idx, CAST(data AS BLOB) FROM leaves WHERE idx >= ? ORDER BY idx"
        for index, data in self._conn.execute(query, (start,)):
            yield int(index), bytes(data)

    def iter_rows(self) -> Iterator[tuple[int, bytes, bytes]]:
        """``(index, stored leaf hash, data)`` in index order."""
        query = "SELECT idx, CAST(hash AS BLOB), CAST(data AS BLOB) FROM leaves ORDER BY idx"
        for index, h, data in self._conn.execute(query):
            yield int(index), bytes(h), bytes(data)

    def node_levels(self) -> dict[int, tuple[int, int, int]]:
        """``level -> (count, min index, max index)`` of the stored perfect-subtree nodes."""
        query = "SELECT level, COUNT(*), MIN(idx), MAX(idx) FROM nodes GROUP BY level"
        return {int(level): (int(n), int(lo), int(hi)) for level, n, lo, hi in self._conn.execute(query)}

    def node_rows(self, level: int) -> list[tuple[int, bytes]]:
        """``(index, hash)`` of the stored nodes of one level, in index order."""
        query = "SELECT idx, CAST(hash AS BLOB) FROM nodes WHERE level = ? ORDER BY idx"
        return self._conn.execute(query, (level,)).fetchall()

    def leaf(self, index: int) -> bytes:
        row = self._conn.execute("SELECT data FROM leaves WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise LogError("no such leaf", file=str(self.path), field=f"leaf {index}")
        return bytes(row[0])

    def checkpoints(self) -> list[tuple[str, str]]:
        rows = self._conn.execute("SELECT seq, note FROM checkpoints ORDER BY seq")
        return [(f"{self.path}: checkpoint #{seq}", note) for seq, note in rows]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> DatabaseSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_json(path: Path, name: str) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read bundle file ({exc.strerror})", file=str(path)) from None
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
        self._offsets: array | None = None

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
            raise InputError(f"cannot read bundle receipts ({exc.strerror})", file=str(self._receipts)) from None

    def _index(self) -> array:
        if self._offsets is None:
            offsets, pos = array("q", [0]), 0
            for line in self._lines():
                pos += len(line) + 1
                offsets.append(pos)
            self._offsets = offsets
        return self._offsets

    def size(self) -> int:
        return len(self._index()) - 1

    def iter_leaves(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        for index, line in enumerate(self._lines()):
            if index >= start:
                yield index, line

    def leaf(self, index: int) -> bytes:
        offsets = self._index()
        if not 0 <= index < len(offsets) - 1:
            raise LogError("no such leaf", file=str(self._receipts), field=f"leaf {index}")
        with self._receipts.open("rb") as fh:
            fh.seek(offsets[index])
            return fh.read(offsets[index + 1] - offsets[index] - 1)

    def checkpoints(self) -> list[tuple[str, str]]:
        out = []
        for name in self.manifest["checkpoints"]:
            file = self.path / name
            try:
                out.append((str(file), file.read_bytes().decode("utf-8")))
            except OSError as exc:
                raise InputError(f"cannot read checkpoint ({exc.strerror})", file=str(file)) from None
            except UnicodeDecodeError:
                raise LogError("checkpoint is not UTF-8", file=str(file)) from None
        return out

    def proofs(self) -> dict[str, Any] | None:
        name = self.manifest.get("proofs")
        return None if name is None else _read_json(self.path / name, "log-proofs")

    def close(self) -> None:
        self._offsets = None

    def __enter__(self) -> BundleSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_log_source(path: str | Path) -> DatabaseSource | BundleSource:
    """A bundle directory (has ``manifest.json``) or a receipt log database file."""
    path = Path(path)
    if path.is_dir():
        if not (path / "manifest.json").is_file():
            raise InputError("directory is not a log bundle", file=str(path), expected="manifest.json inside")
        return BundleSource(path)
    if not path.exists():
        raise InputError("no such log or bundle", file=str(path))
    return DatabaseSource(path)


def export_bundle(source: DatabaseSource | BundleSource, out_dir: str | Path, *, proofs: bool = True) -> Path:
    """Write a portable bundle of ``source`` to ``out_dir`` (which must not exist or be empty)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError("refusing to export into a non-empty path", file=str(out))
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    hashes = []
    with (out / "receipts.jsonl").open("wb") as fh:
        for expected, (index, data) in enumerate(source.iter_leaves()):
            if index != expected or b"\n" in data:
                raise LogError("log leaf missing or malformed; verify the log first", file=str(source.path),
                               field=f"leaf {expected}")
            fh.write(data + b"\n")
            hashes.append(leaf_hash(data))
    names, latest = [], None
    for seq, (where, note) in enumerate(source.checkpoints(), start=1):
        latest = parse_checkpoint(note, source=where).checkpoint
        name = f"checkpoints/{seq:06d}.note"
        (out / name).write_text(note, encoding="utf-8")
        names.append(name)
    manifest: dict[str, Any] = {"schema": BUNDLE_SCHEMA, "origin": source.origin, "size": len(hashes),
                                "receipts": "receipts.jsonl", "checkpoints": names}
    if proofs and latest is not None and latest.size <= len(hashes):
        tree = MemoryTree(hashes[: latest.size])
        doc = {"schema": PROOFS_SCHEMA, "tree_size": latest.size, "root_hash": tree.root().hex(),
               "proofs": [{"index": i, "leaf_hash": hashes[i].hex(),
                           "path": [p.hex() for p in tree.inclusion_proof(i)]} for i in range(latest.size)]}
        validate(doc, "log-proofs")
        (out / "proofs.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
        manifest["proofs"] = "proofs.json"
    validate(manifest, "log-bundle")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out
