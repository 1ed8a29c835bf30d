"""Render a signed audit binder: PDF/A-3b from the package's jinja2 templates with weasyprint, the evidence embedded
as associated files, byte-deterministic, with a detached DSSE signature beside it.

Determinism (same inputs ⇒ same PDF bytes, in any process on any machine with the same package versions):

* the only fonts are the files pinned in ``kolm_audit/binder/fonts`` (checked against :data:`FONTS`' sha256);
  characters they cannot draw are printed as ``[U+XXXX]`` (:func:`kolm_audit.binder.pages.printable`), so no
  machine font is ever substituted;
* the only date is the report's (``environment.finished``): it is the document's creation and modification
  date, every attachment's dates, and ``SOURCE_DATE_EPOCH`` while rendering (fontTools stamps subset fonts
  with it, else with the clock);
* the PDF identifier is derived from the report's digest; attachment media types are set from our own table,
  not from the machine's MIME database.

    >>> sorted(FONTS)
    ['DejaVuSans-Bold.ttf', 'DejaVuSans.ttf', 'DejaVuSansMono.ttf']
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kolm_audit import __version__
from kolm_audit._atomic import write_atomic
from kolm_audit.binder.evidence import Evidence, gather
from kolm_audit.binder.pages import build_context, printable
from kolm_audit.binder.statement import sign_binder, signature_path
from kolm_audit.errors import InputError
from kolm_audit.keys import PrivateKey
from kolm_audit.schemas import validate
from kolm_audit.timefmt import format_time

_HERE = Path(__file__).resolve().parent
FONT_DIR = _HERE / "fonts"
TEMPLATE_DIR = _HERE / "templates"
FONTS: dict[str, str] = {   # file -> sha256 (DejaVu 2.37, Debian fonts-dejavu-core 2.37-6; fonts/LICENSE.txt)
    "DejaVuSans.ttf": "abdc775b21b1bc470d50c97e790d276f2054b7504e56e5bd3e64f48d68582322",
    "DejaVuSans-Bold.ttf": "0d977336a6d5fba34eab8e3199eb218327161b5143749f802982c2bc34df0c96",
    "DejaVuSansMono.ttf": "0f5db4f1749979d961019838b160bec74abdf7f9eca69553fe1aa856bbff49a4",
}
_FACES = (("KolmSans", "normal", "DejaVuSans.ttf"), ("KolmSans", "bold", "DejaVuSans-Bold.ttf"),
          ("KolmMono", "normal", "DejaVuSansMono.ttf"))


@functools.cache
def _fonts() -> tuple[str, frozenset[int]]:
    """The @font-face rules for the pinned fonts, and the code points every one of them can draw."""
    from fontTools.ttLib import TTFont

    rules, drawable = [], None
    for family, weight, name in _FACES:
        path = FONT_DIR / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"pinned font missing ({exc.strerror})", file=str(path)) from None
        if hashlib.sha256(data).hexdigest() != FONTS[name]:
            raise InputError("pinned font file changed", file=str(path), expected=f"sha256 {FONTS[name]}")
        rules.append(f"@font-face{{font-family:{family};font-weight:{weight};src:url({path.as_uri()})}}")
        cmap = frozenset(TTFont(io.BytesIO(data), lazy=True)["cmap"].getBestCmap())
        drawable = cmap if drawable is None else drawable & cmap
    assert drawable is not None
    return "".join(rules), drawable


@functools.cache
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    drawable = _fonts()[1]
    env.filters["t"] = lambda value: printable("" if value is None else str(value), drawable)
    return env


def render_html(ev: Evidence, *, binder_name: str, artifact_name: str, key_id: str) -> str:
    """The binder's HTML (what weasyprint lays out)."""
    fonts_css, drawable = _fonts()
    context = build_context(ev, binder_name=binder_name, artifact_name=artifact_name, key_id=key_id, drawable=drawable)
    css = (TEMPLATE_DIR / "binder.css").read_text(encoding="utf-8")
    return _environment().get_template("binder.html.j2").render(fonts_css=fonts_css, css=css, **context)


@contextlib.contextmanager
def _source_date_epoch(epoch: int) -> Iterator[None]:
    """``SOURCE_DATE_EPOCH`` set for the duration (fontTools reads it when it subsets a font)."""
    old = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = str(epoch)
    try:
        yield
    finally:
        if old is None:
            del os.environ["SOURCE_DATE_EPOCH"]
        else:
            os.environ["SOURCE_DATE_EPOCH"] = old


def _finisher(media_types: dict[str, str]) -> Any:
    """Post-process weasyprint's PDF objects: our media types on the embedded files, each /AF entry once."""
    import pydyf

    def finish(document: Any, pdf: Any) -> None:
        for obj in pdf.objects:
            if isinstance(obj, pydyf.Stream) and obj.extra.get("Type") == "/EmbeddedFile":
                checksum = str(obj.extra["Params"]["CheckSum"]).strip("<>")
                obj.extra["Subtype"] = "/" + media_types[checksum].replace("/", "#2f").replace("+", "#2b")
        af = pdf.catalog.get("AF")
        if af is not None:
            unique = list(dict.fromkeys(af))
            af.clear()
            af.extend(unique)
    return finish


def render_pdf(ev: Evidence, *, binder_name: str, artifact_name: str, key_id: str) -> tuple[bytes, int]:
    """The PDF/A-3b bytes and page count (deterministic)."""
    from weasyprint import HTML, Attachment
    from weasyprint.text.fonts import FontConfiguration

    html = render_html(ev, binder_name=binder_name, artifact_name=artifact_name, key_id=key_id)
    stamp = ev.created.replace(microsecond=0)
    attachments = [Attachment(string=d.data, name=d.name, description=d.description, created=stamp, modified=stamp,
                              relationship=d.relationship) for d in ev.documents]
    media = {hashlib.md5(d.data, usedforsecurity=False).hexdigest(): d.media_type for d in ev.documents}
    options = {"pdf_variant": "pdf/a-3b", "pdf_identifier": ev.report_digest[7:39].encode("ascii"), "pdf_tags": True,
               "attachments": attachments}
    with _source_date_epoch(int(stamp.timestamp())):
        document = HTML(string=html, base_url=str(TEMPLATE_DIR)).render(font_config=FontConfiguration(), **options)
        pdf = document.write_pdf(finisher=_finisher(media), **options)
    return pdf, len(document.pages)


@dataclass(frozen=True)
class RenderResult:
    path: Path
    signature: Path
    digest: str
    bytes: int
    pages: int
    key_id: str
    evidence: Evidence
    elapsed_ms: int

    def to_json(self) -> dict[str, Any]:
        doc = {"schema": "kolm.binder-render-report/1", "file": str(self.path), "signature": str(self.signature),
               "binder_digest": self.digest, "bytes": self.bytes, "pages": self.pages, "key_id": self.key_id,
               "embedded_log": self.evidence.embedded_log, "cited_receipts": len(self.evidence.cited),
               "documents": [d.to_json() for d in self.evidence.documents], "elapsed_ms": self.elapsed_ms}
        validate(doc, "binder-render-report")
        return doc


def predicate(ev: Evidence) -> dict[str, Any]:
    """The ``kolm.binder/1`` predicate the signature covers."""
    res = ev.report["results"]
    latest = ev.latest
    return {"schema": "kolm.binder/1", "created": format_time(ev.created.replace(microsecond=0)),
            "tool": {"name": "kolm-audit", "version": __version__},
            "report": {"digest": ev.report_digest, "results_digest": ev.report["results_digest"],
                       "verdict": res["verdict"]},
            "artifact": {"digest": ev.artifact_digest, "name": ev.manifest["name"], "version": ev.manifest["version"]},
            "log": {"origin": ev.origin, "size": ev.log_size,
                    "checkpoint_size": None if latest is None else latest.size,
                    "root_hex": None if latest is None else latest.root_hex, "embedded": ev.embedded_log},
            "documents": [d.to_json() for d in ev.documents]}


def render_binder(*, report: str | Path, artifact: str | Path, log: str | Path, out: str | Path, key: PrivateKey,
                  provenance: str | Path | None = None, embed: str = "auto") -> RenderResult:
    """Gather the evidence, render ``out`` (PDF/A-3b) and sign it into ``out.sig`` (written atomically, PDF first)."""
    started = time.perf_counter()
    out = Path(out)
    ev = gather(report_path=Path(report), artifact_path=Path(artifact), log_path=Path(log),
                provenance_path=None if provenance is None else Path(provenance), embed=embed)
    pdf, pages = render_pdf(ev, binder_name=out.name, artifact_name=Path(artifact).name, key_id=key.key_id)
    envelope = sign_binder(pdf, name=out.name, predicate=predicate(ev), key=key)
    sig = signature_path(out)
    write_atomic(out, pdf, what="binder")
    write_atomic(sig, envelope.canonical_bytes(), what="binder signature")
    return RenderResult(path=out, signature=sig, digest="sha256:" + hashlib.sha256(pdf).hexdigest(), bytes=len(pdf),
                        pages=pages, key_id=key.key_id, evidence=ev,
                        elapsed_ms=int((time.perf_counter() - started) * 1000))

