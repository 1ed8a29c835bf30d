"""The receipts stage: one signed RS-1 document (``kolm.receipt/1``) per decision, and who records them.

Start at :class:`Recorder` (what ``run`` and services call: run the model, append one signed receipt per decision
to the log). The document itself, its signing and strict reading are :mod:`~kolm_audit.receipts.document`; the
rules a reader enforces beyond the schema :mod:`~kolm_audit.receipts.rules`; per-tenant encryption of texts and
crypto-shredding :mod:`~kolm_audit.receipts.privacy`. Formats: docs/formats.md, docs/privacy.md.

Example::

    >>> from kolm_audit.receipts import RECEIPT_SCHEMA
    >>> RECEIPT_SCHEMA
    'kolm.receipt/1'
"""

from __future__ import annotations

from kolm_audit.receipts.document import (
    RECEIPT_SCHEMA,
    Decision,
    Decoding,
    ReceiptContext,
    SignedReceipt,
    input_ids_of,
    make_leaf_verifier,
    parse_leaf,
    reveal,
    verify_receipt,
)
from kolm_audit.receipts.privacy import KeyEncryptionKey, KeyStore, TenantCrypto
from kolm_audit.receipts.recorder import Recorded, Recorder, Request

__all__ = ["RECEIPT_SCHEMA", "Decision", "Decoding", "KeyEncryptionKey", "KeyStore", "ReceiptContext", "Recorded",
           "Recorder", "Request", "SignedReceipt", "TenantCrypto", "input_ids_of", "make_leaf_verifier", "parse_leaf",
           "reveal", "verify_receipt"]
