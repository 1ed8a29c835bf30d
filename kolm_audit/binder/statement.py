"""The binder's detached signature: ``binder.pdf.sig``, a DSSE envelope over an in-toto Statement v1 whose subject is
the PDF (its sha256) and whose predicate (``kolm.binder/1``, schema ``schemas/binder-statement.schema.json``) names
what the binder binds: the report, the artifact, the log and the digest of every embedded document.

The envelope is written as its RFC 8785 bytes and read strictly (:func:`read_signature`).

    >>> from kolm_audit.keys import generate_key
    >>> key = generate_key(key_type="ed25519")
    >>> pred = {"schema": "kolm.binder/1", "created": "2026-01-01T00:00:00Z",
    ...         "tool": {"name": "kolm-audit", "version": "0"},
    ...         "report": {"digest": "sha256:" + "1" * 64, "results_digest": "sha256:" + "2" * 64,
    ...                    "verdict": "matched"},
    ...         "artifact": {"digest": "sha256:" + "3" * 64, "name": "m", "version": "1"},
    ...         "log": {"origin": "example.org/log", "size": 1, "checkpoint_size": 1, "root_hex": "4" * 64,
    ...                 "embedded": "full"},
    ...         "documents": []}
    >>> env = sign_binder(b"%PDF-1.7 ...", name="binder.pdf", predicate=pred, key=key)
    >>> parse_statement(env, file="binder.pdf.sig")["predicate"]["log"]["size"]
    1
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kolm_audit.canonical import digest, jcs, loads_canonical, loads_strict
from kolm_audit.errors import InputError, SignatureError
from kolm_audit.keys import PrivateKey
from kolm_audit.schemas import validate
from kolm_audit.signing import IN_TOTO_PAYLOAD_TYPE, Envelope, sign_envelope, statement

PREDICATE_SCHEMA = "kolm.binder/1"
PREDICATE_TYPE = "https://kolm-audit.dev/binder/v1"


def signature_path(pdf: str | Path) -> Path:
    """Where the detached signature of ``pdf`` lives: ``<pdf>.sig``."""
    pdf = Path(pdf)
    return pdf.with_name(pdf.name + ".sig")


def sign_binder(pdf: bytes, *, name: str, predicate: Mapping[str, Any], key: PrivateKey) -> Envelope:
    """A DSSE envelope by ``key`` over the statement that ``pdf`` is the binder ``predicate`` describes."""
    stmt = statement(subject_name=name, subject_digest=digest(pdf), predicate_type=PREDICATE_TYPE,
                     predicate=predicate)
    validate(stmt, "binder-statement")
    return sign_envelope(jcs(stmt), payload_type=IN_TOTO_PAYLOAD_TYPE, key=key)


def read_signature(path: Path) -> Envelope:
    """The envelope in ``path``, strictly read (canonical JSON, DSSE form); a missing file is a finding."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SignatureError("binder is not signed: no detached signature beside it", file=str(path),
                             expected="the DSSE envelope kolm-audit binder wrote") from None
    except OSError as exc:
        raise InputError(f"cannot read signature ({exc.strerror})", file=str(path)) from None
    doc = loads_canonical(data, file=str(path), error=SignatureError)
    return Envelope.from_json(doc, file=str(path))


def parse_statement(env: Envelope, *, file: str) -> dict[str, Any]:
    """The signed statement, validated (signatures are checked by the caller, with the trust policy)."""
    if env.payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise SignatureError("unexpected payloadType", file=file, field="payloadType", expected=IN_TOTO_PAYLOAD_TYPE,
                             actual=env.payload_type[:80])
    stmt = loads_strict(env.payload, file=file, field="payload", error=SignatureError)
    validate(stmt, "binder-statement", source=file)
    return stmt
