"""Structural PDF/A-3b self-checks with pikepdf: what a binder must have to be the archival file it claims to be.

These are not a PDF/A validator — veraPDF (https://verapdf.org) is the external authority, and the docs say so —
but they catch what would break archiving or what a renderer change could silently drop:

* the header says PDF 1.4 to 1.7 (PDF/A-3 is based on PDF 1.7) and the trailer has an /ID;
* no encryption; no JavaScript (/JS, /JavaScript, /AA additional actions) anywhere in the file;
* XMP metadata with ``pdfaid:part = 3`` and ``pdfaid:conformance = B``, and a dc:title equal to /Info /Title;
* an /OutputIntent of subtype /GTS_PDFA1 with an embedded ICC profile;
* every font used on every page (and in its form XObjects) is embedded (/FontFile, /FontFile2 or /FontFile3);
* a tagged document (/MarkInfo /Marked true, a /StructTreeRoot);
* every embedded file is an associated file: its file specification has /F, /UF, /AFRelationship and is listed in
  the catalog's /AF; its stream has /Type /EmbeddedFile, a MIME /Subtype and /Params with /ModDate, /Size and
  /CheckSum.

:func:`check_pdfa` raises :class:`~kolm_audit.errors.BinderError` on the first failure and returns the names of the
checks that passed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kolm_audit.errors import BinderError

CHECKS = ("pdf-version", "file-id", "no-encryption", "no-javascript", "xmp-pdfa-3b", "xmp-title", "output-intent",
          "fonts-embedded", "tagged", "associated-files")
_RELATIONSHIPS = {"/Source", "/Data", "/Alternative", "/Supplement", "/EncryptedPayload", "/FormData", "/Schema",
                  "/Unspecified"}


def _fail(check: str, message: str, file: str) -> BinderError:
    return BinderError(f"not PDF/A-3b: {message}", file=file, field=check)


def _fonts(resources: Any, seen: set[tuple[int, int]]) -> Iterator[tuple[str, Any]]:
    """(name, font dictionary) of every font in ``resources``, through form XObjects (each visited once)."""
    if resources is None:
        return
    yield from (resources.get("/Font") or {}).items()
    for xobj in (resources.get("/XObject") or {}).values():
        key = xobj.objgen
        if key in seen or xobj.get("/Subtype") != "/Form":
            continue
        seen.add(key)
        yield from _fonts(xobj.get("/Resources"), seen)


def _has_script(obj: Any, pikepdf: Any, *, top: bool = False) -> bool:
    """Whether ``obj`` or a direct object inside it has /JS, /JavaScript, /AA or a JavaScript action (indirect
    children are objects of their own and are visited by the caller)."""
    if not top and getattr(obj, "is_indirect", False):
        return False
    if isinstance(obj, pikepdf.Dictionary | pikepdf.Stream):
        if any(k in obj for k in ("/JS", "/JavaScript", "/AA")) or obj.get("/S") == "/JavaScript":
            return True
        return any(_has_script(obj.get(k), pikepdf) for k in obj.keys())  # noqa: SIM118 (pikepdf objects)
    if isinstance(obj, pikepdf.Array):
        return any(_has_script(v, pikepdf) for v in obj)
    return False


def _embedded(font: Any) -> bool:
    if font.get("/Subtype") == "/Type3":
        return True   # glyphs are content streams in the file itself
    if font.get("/Subtype") == "/Type0":
        return all(_embedded(d) for d in font.get("/DescendantFonts", []))
    desc = font.get("/FontDescriptor")
    return desc is not None and any(k in desc for k in ("/FontFile", "/FontFile2", "/FontFile3"))


def check_pdfa(path: str | Path) -> tuple[str, ...]:
    """Run every structural check on the PDF at ``path``; raise on the first failure."""
    import pikepdf

    where = str(path)
    head = Path(path).read_bytes()[:16]
    match = re.match(rb"%PDF-1\.([4-7])", head)
    if match is None:
        raise _fail("pdf-version", f"header {head[:8]!r} is not PDF 1.4-1.7", where)
    try:
        pdf = pikepdf.open(path)
    except pikepdf.PasswordError:
        raise _fail("no-encryption", "the file is encrypted", where) from None
    except pikepdf.PdfError as exc:
        raise BinderError(f"not a readable PDF ({exc})", file=where) from None
    with pdf:
        try:
            return _checks(pdf, pikepdf, where)
        except pikepdf.PdfError as exc:   # a damaged stream or object
            raise BinderError(f"not a readable PDF ({exc})", file=where) from None


def _checks(pdf: Any, pikepdf: Any, where: str) -> tuple[str, ...]:
    if "/ID" not in pdf.trailer:
        raise _fail("file-id", "the trailer has no /ID", where)
    if pdf.is_encrypted:
        raise _fail("no-encryption", "the file is encrypted", where)
    for obj in pdf.objects:
        if _has_script(obj, pikepdf, top=True):
            raise _fail("no-javascript", f"object {obj.objgen} carries JavaScript or an additional action", where)
    root = pdf.Root
    _check_xmp(pdf, where)
    _check_output_intent(root, where)
    seen: set[tuple[int, int]] = set()
    for number, page in enumerate(pdf.pages, start=1):
        for name, font in _fonts(page.obj.get("/Resources"), seen):
            if not _embedded(font):
                raise _fail("fonts-embedded", f"font {name} ({font.get('/BaseFont')}) on page {number} is not "
                            "embedded", where)
    mark = root.get("/MarkInfo")
    if mark is None or not bool(mark.get("/Marked", False)) or "/StructTreeRoot" not in root:
        raise _fail("tagged", "not a tagged PDF (/MarkInfo /Marked, /StructTreeRoot)", where)
    _check_associated_files(pdf, where)
    return CHECKS


def _check_xmp(pdf: Any, where: str) -> None:
    if "/Metadata" not in pdf.Root:
        raise _fail("xmp-pdfa-3b", "no XMP metadata stream", where)
    meta = pdf.open_metadata()
    if (meta.get("pdfaid:part"), str(meta.get("pdfaid:conformance", "")).upper()) != ("3", "B"):
        raise _fail("xmp-pdfa-3b", f"XMP says part {meta.get('pdfaid:part')!r}, conformance "
                    f"{meta.get('pdfaid:conformance')!r}", where)
    info_title = pdf.docinfo.get("/Title") if pdf.trailer.get("/Info") is not None else None
    xmp_title = meta.get("dc:title")
    if info_title is not None and str(info_title) != str(xmp_title):
        raise _fail("xmp-title", f"/Info /Title {str(info_title)!r} differs from XMP dc:title {xmp_title!r}", where)


def _check_output_intent(root: Any, where: str) -> None:
    intents = root.get("/OutputIntents") or []
    if not any(i.get("/S") == "/GTS_PDFA1" and "/DestOutputProfile" in i for i in intents):
        raise _fail("output-intent", "no /OutputIntent /GTS_PDFA1 with an ICC profile", where)


def _check_associated_files(pdf: Any, where: str) -> None:
    root = pdf.Root
    af = {o.objgen for o in (root.get("/AF") or [])}
    for name, spec in pdf.attachments.items():
        obj = spec.obj
        if obj.objgen not in af:
            raise _fail("associated-files", f"{name} is not listed in the catalog /AF", where)
        if "/F" not in obj or "/UF" not in obj or str(obj.get("/AFRelationship")) not in _RELATIONSHIPS:
            raise _fail("associated-files", f"{name}: file specification lacks /F, /UF or /AFRelationship", where)
        stream = obj.get("/EF", {}).get("/F")
        if stream is None or stream.get("/Type") != "/EmbeddedFile" or "/Subtype" not in stream:
            raise _fail("associated-files", f"{name}: no /EmbeddedFile stream with a MIME /Subtype", where)
        params = stream.get("/Params") or {}
        missing = [k for k in ("/ModDate", "/Size", "/CheckSum") if k not in params]
        if missing:
            raise _fail("associated-files", f"{name}: /Params lacks {', '.join(missing)}", where)
