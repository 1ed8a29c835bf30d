"""Get a binder's embedded documents back, byte for byte (``kolm-audit binder extract binder.pdf --out DIR``).

Each PDF/A-3 associated file is written to ``DIR/<its name>`` (``report.json``, ``artifact/manifest.json``,
``log/receipts.jsonl`` ...), so ``DIR/log`` is a log bundle that ``kolm-audit log verify`` and ``kolm-audit replay``
read. ``DIR/index.json`` (``kolm.binder-index/1``) lists every file with its sha256, size and relationship.

Names are checked before anything is written: a hostile PDF cannot write outside ``DIR`` (no absolute paths, no
``..``, nothing but ``[A-Za-z0-9._-]`` path segments), and each file's stored size and MD5 checksum must match
its bytes. Signatures are not checked here; that is ``kolm-audit verify binder.pdf``.

    >>> safe_name("log/checkpoints/000001.note")
    'log/checkpoints/000001.note'
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kolm_audit.binder.evidence import Document
from kolm_audit.canonical import digest
from kolm_audit.errors import BinderError, InputError
from kolm_audit.schemas import validate

INDEX_SCHEMA = "kolm.binder-index/1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9][A-Za-z0-9._-]{0,99}){0,7}$")


def safe_name(name: str, *, file: str | None = None) -> str:
    """``name`` if it is a relative path of plain segments (never ``..``, never absolute), else a finding."""
    if not _NAME.match(name) or any(part in (".", "..") for part in name.split("/")) or name == "index.json":
        raise BinderError("embedded file name is not a safe relative path", file=file, field="attachment name",
                          expected="segments of [A-Za-z0-9._-], no '..'", actual=repr(name)[:120])
    return name


@dataclass(frozen=True)
class Embedded(Document):
    """One embedded file as found in the PDF; its index entry also carries the description."""

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "description": self.description}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def read_embedded(pdf_path: str | Path) -> list[Embedded]:
    """Every embedded file of the PDF (name tree /EmbeddedFiles), checked against its stored size and MD5."""
    import pikepdf

    where = str(pdf_path)
    try:
        pdf = pikepdf.open(pdf_path)
    except FileNotFoundError:
        raise InputError("no such binder", file=where) from None
    except pikepdf.PdfError as exc:
        raise BinderError(f"not a readable PDF ({exc})", file=where) from None
    with pdf:
        try:
            return _embedded_files(pdf, where)
        except pikepdf.PdfError as exc:   # a damaged stream or object
            raise BinderError(f"embedded files cannot be read ({exc})", file=where) from None


def _embedded_files(pdf: Any, where: str) -> list[Embedded]:
    out = []
    for name, spec in sorted(pdf.attachments.items()):
        safe_name(name, file=where)
        stream = spec.obj.get("/EF", {}).get("/F")
        if stream is None:
            raise BinderError("embedded file without data", file=where, field=name)
        data = stream.read_bytes()
        params = stream.get("/Params", {})
        size, checksum = params.get("/Size"), params.get("/CheckSum")
        if size is not None and int(size) != len(data):
            raise BinderError("embedded file size differs from its stored /Size", file=where, field=name,
                              expected=str(int(size)), actual=str(len(data)))
        if checksum is not None and bytes(checksum) != hashlib.md5(data, usedforsecurity=False).digest():
            raise BinderError("embedded file differs from its stored /CheckSum", file=where, field=name)
        rel = _text(spec.obj.get("/AFRelationship")).lstrip("/")
        media = _text(stream.get("/Subtype")).lstrip("/").replace("#2f", "/").replace("#2F", "/")
        out.append(Embedded(name=name, data=data, relationship=rel, media_type=media,
                            description=_text(spec.obj.get("/Desc"))))
    return out


def extract_binder(pdf_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write every embedded document under ``out_dir`` (absent or empty) and ``index.json``; return the index."""
    pdf_path, out = Path(pdf_path), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError("refusing to extract into a non-empty path", file=str(out),
                         expected="an absent or empty folder")
    try:
        data = pdf_path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read binder ({exc.strerror})", file=str(pdf_path)) from None
    docs = read_embedded(pdf_path)
    index = {"schema": INDEX_SCHEMA, "binder": {"file": pdf_path.name, "digest": digest(data), "bytes": len(data)},
             "documents": [d.to_json() for d in docs]}
    validate(index, "binder-index")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for d in docs:
            target = out / d.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(d.data)
        (out / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write the extracted files ({exc.strerror})", file=str(out)) from None
    return index
