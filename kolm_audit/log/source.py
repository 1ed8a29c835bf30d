"""One way to read a receipt log, wherever it is stored: the SQLite database or an exported bundle.

Verification and replay read either form through :func:`open_log_source`; :func:`export_bundle` writes the
portable form of any source::

    >>> import tempfile, pathlib
    >>> from kolm_audit.log.db import ReceiptLog
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with ReceiptLog.open(d / "r.db", create=True, origin="example.org/log") as log:
    ...     _ = log.append(lambda i: b'{"i":%d}' % i)
    >>> with open_log_source(export_bundle(d / "r.db", d / "bundle")) as src:
    ...     list(src.iter_leaves())
    [(0, b'{"i":0}')]
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from kolm_audit.errors import InputError, LogError
from kolm_audit.log.bundle import BUNDLE_SCHEMA, PROOFS_SCHEMA, BundleSource
from kolm_audit.log.checkpoint import parse_checkpoint
from kolm_audit.log.db import DatabaseSource
from kolm_audit.log.excerpt import write_excerpt
from kolm_audit.log.merkle import MemoryTree, leaf_hash
from kolm_audit.schemas import validate


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


def export_bundle(source: LogSource | str | Path, out_dir: str | Path, *, proofs: bool = True,
                  indices: Sequence[int] | None = None) -> Path:
    """Write a portable bundle of ``source`` (a source, or the path of a log) to ``out_dir`` (absent or empty).

    With ``indices``, write an excerpt holding only those leaves, each with its inclusion proof
    (:mod:`kolm_audit.log.excerpt`).
    """
    if isinstance(source, str | Path):
        with open_log_source(source) as src:
            return export_bundle(src, out_dir, proofs=proofs, indices=indices)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError("refusing to export into a non-empty path", file=str(out))
    if indices is not None:
        return write_excerpt(source, out, indices=indices)
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
