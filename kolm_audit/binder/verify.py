"""Verify an audit binder: ``kolm-audit verify binder.pdf --trust trust.toml``.

In order (the first failure raises; a finding exits 1):

1. the detached signature ``binder.pdf.sig``: strict DSSE envelope, a valid in-toto statement
   (``schemas/binder-statement.schema.json``), a signature by a key the trust policy allows for role ``binder``
   at the binder's date;
2. every embedded document: the set of names and each one's sha256, size and relationship equal the signed list
   (a changed attachment is named);
3. the PDF's own sha256 equals the signed subject (any other changed byte: a page, the metadata, the structure);
4. the PDF/A-3b structural checks (:mod:`kolm_audit.binder._pdfa`);
5. the embedded evidence agrees with itself: the report's results hash to its results digest, the manifest hashes
   to the artifact digest the report and the statement name, the verdicts agree.

What it does not do: check the embedded log's signatures or replay (``kolm-audit log verify`` and
``kolm-audit replay`` on the extracted folder; docs/binder.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kolm_audit.binder._pdfa import check_pdfa
from kolm_audit.binder.extract import Embedded, read_embedded
from kolm_audit.binder.statement import parse_statement, read_signature, signature_path
from kolm_audit.canonical import digest, digest_of, loads_strict
from kolm_audit.errors import BinderError, InputError, KolmError
from kolm_audit.schemas import validate
from kolm_audit.timefmt import parse_time
from kolm_audit.trust import Signer, TrustPolicy, verify_envelope

REPORT_SCHEMA = "kolm.binder-verify-report/1"


@dataclass(frozen=True)
class BinderVerifyReport:
    file: str
    signature: str
    binder_digest: str
    signers: tuple[Signer, ...]
    predicate: Mapping[str, Any]
    pdfa_checks: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        p = self.predicate
        doc = {"schema": REPORT_SCHEMA, "file": self.file, "verified": True, "signature": self.signature,
               "binder_digest": self.binder_digest, "signers": [s.to_json() for s in self.signers],
               "created": p["created"], "report": dict(p["report"]), "artifact": dict(p["artifact"]),
               "log": dict(p["log"]), "documents": list(p["documents"]), "pdfa_checks": list(self.pdfa_checks)}
        validate(doc, "binder-verify-report")
        return doc


def failed_binder_report(path: str | Path, error: KolmError) -> dict[str, Any]:
    doc = {"schema": REPORT_SCHEMA, "file": str(path), "verified": False, "error": error.to_json()}
    validate(doc, "binder-verify-report")
    return doc


def is_pdf(path: str | Path) -> bool:
    """Whether ``path`` starts like a PDF (``%PDF-``): how ``kolm-audit verify`` tells a binder from an artifact."""
    try:
        with open(path, "rb") as fh:
            return fh.read(5) == b"%PDF-"
    except OSError:
        return False


def _compare(docs: Sequence[Embedded], signed: Sequence[Mapping[str, Any]], *, file: str) -> None:
    have = {d.name: d for d in docs}
    want = {d["name"]: d for d in signed}
    for name in sorted(set(have) | set(want)):
        if name not in have:
            raise BinderError("a signed document is missing from the binder", file=file, field=name)
        if name not in want:
            raise BinderError("the binder carries a document the signature does not list", file=file, field=name)
        d, w = have[name], want[name]
        if d.digest != w["digest"] or len(d.data) != w["bytes"]:
            raise BinderError("embedded document differs from the signed one (tampered attachment)", file=file,
                              field=name, expected=w["digest"], actual=d.digest)
        if d.relationship != w["relationship"]:
            raise BinderError("embedded document's relationship differs from the signed one", file=file, field=name,
                              expected=w["relationship"], actual=d.relationship)


def _check_contents(docs: Sequence[Embedded], predicate: Mapping[str, Any], *, file: str) -> None:
    by_name = {d.name: d for d in docs}
    for name in ("report.json", "artifact/manifest.json"):
        if name not in by_name:
            raise BinderError("the binder lacks a required document", file=file, field=name)
    report = loads_strict(by_name["report.json"].data, file=f"{file}#report.json", error=BinderError)
    validate(report, "replay-report", source=f"{file}#report.json")
    if digest_of(report["results"]) != report["results_digest"]:
        raise BinderError("embedded report's results do not hash to its results digest", file=file,
                          field="report.json", expected=report["results_digest"], actual=digest_of(report["results"]))
    art = predicate["artifact"]["digest"]
    if by_name["artifact/manifest.json"].digest != art or report["results"]["artifact"]["digest"] != art:
        raise BinderError("the embedded manifest, report and signed statement name different artifacts", file=file,
                          field="artifact/manifest.json", expected=art, actual=by_name["artifact/manifest.json"].digest)
    if by_name["report.json"].digest != predicate["report"]["digest"] or report["results"]["verdict"] != predicate[
            "report"]["verdict"]:
        raise BinderError("embedded report and signed statement disagree", file=file, field="report.json",
                          expected=predicate["report"]["digest"], actual=by_name["report.json"].digest)


def verify_binder(path: str | Path, *, policy: TrustPolicy, signature: str | Path | None = None) -> BinderVerifyReport:
    """Verify the binder at ``path`` (see the module docstring); return what was established."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read binder ({exc.strerror})", file=str(path)) from None
    if not data.startswith(b"%PDF-"):
        raise InputError("not a PDF", file=str(path), expected="a binder written by kolm-audit binder")
    sig = Path(signature) if signature is not None else signature_path(path)
    env = read_signature(sig)
    stmt = parse_statement(env, file=str(sig))
    pred = stmt["predicate"]
    signers = verify_envelope(env, policy, role="binder", at=parse_time(pred["created"]))
    docs = read_embedded(path)
    _compare(docs, pred["documents"], file=str(path))
    own = digest(data)
    if own != "sha256:" + stmt["subject"][0]["digest"]["sha256"]:
        raise BinderError("the PDF differs from the signed one (a page, the metadata or the structure changed)",
                          file=str(path), expected="sha256:" + stmt["subject"][0]["digest"]["sha256"], actual=own)
    checks = check_pdfa(path)
    _check_contents(docs, pred, file=str(path))
    return BinderVerifyReport(file=str(path), signature=str(sig), binder_digest=own, signers=tuple(signers),
                              predicate=pred, pdfa_checks=checks)
