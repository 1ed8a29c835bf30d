"""The binder stage: a signed PDF/A-3b audit binder that carries its own evidence (guide: docs/binder.md).

* :func:`~kolm_audit.binder.render.render_binder` — gather the replay report, the artifact's manifest, signatures
  and provenance, and the receipt log (whole, or an excerpt of the cited receipts), render the binder from the
  package's templates with weasyprint, byte-deterministic, and sign it (``binder.pdf.sig``, role ``binder``);
* :func:`~kolm_audit.binder.extract.extract_binder` — get the embedded documents back, byte for byte;
* :func:`~kolm_audit.binder.verify.verify_binder` — the signature, every embedded document's digest, the PDF/A
  structure (:mod:`~kolm_audit.binder._pdfa`) and the embedded report's own consistency.

Import from the defining modules (``kolm_audit.binder.render`` ...); this package's ``__init__`` imports nothing, so
``kolm-audit`` never pays for weasyprint unless it renders.

    >>> import kolm_audit.binder
"""
