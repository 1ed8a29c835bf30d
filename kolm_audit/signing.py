"""DSSE envelopes (https://github.com/secure-systems-lab/dsse, protocol v1) and in-toto Statements v1.

The signature is computed over the Pre-Authentication Encoding (DSSE "PAE")::

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

where LEN is the ASCII decimal byte length. Envelopes are written as JSON with standard base64 (RFC 4648
§4, padded) ``payload`` and ``sig`` fields, and read strictly (unknown fields, bad base64 and empty
signature lists are refused).

    >>> from kolm_audit.keys import generate_key
    >>> key = generate_key(key_type="ed25519")
    >>> env = sign_envelope(b'{"a":1}', payload_type="application/json", key=key)
    >>> verify_signature(env, env.signatures[0], key.public_key())
    >>> Envelope.from_json(env.to_json()) == env
    True
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kolm_audit.canonical import check_digest, jcs
from kolm_audit.errors import SignatureError
from kolm_audit.keys import PrivateKey, PublicKey

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_V1 = "https://in-toto.io/Statement/v1"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding."""
    ptype = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(ptype), ptype, len(payload), payload)


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: object, *, field: str, file: str | None = None) -> bytes:
    """Strict standard base64: canonical padding, no whitespace, re-encodes to the same text."""
    if not isinstance(text, str):
        raise SignatureError("expected a base64 string", file=file, field=field, actual=type(text).__name__)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("invalid base64", file=file, field=field) from None
    if b64encode(raw) != text:
        raise SignatureError("non-canonical base64", file=file, field=field)
    return raw


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes

    def __post_init__(self) -> None:
        check_digest(self.keyid, field="signatures[].keyid")
        if not self.sig:
            raise SignatureError("empty signature", field=self.keyid)

    def to_json(self) -> dict[str, str]:
        return {"keyid": self.keyid, "sig": b64encode(self.sig)}


@dataclass(frozen=True)
class Envelope:
    """A DSSE envelope: ``payload`` bytes of ``payload_type`` with one or more signatures."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def __post_init__(self) -> None:
        if not self.payload_type:
            raise SignatureError("empty payloadType", field="payloadType")

    def to_json(self) -> dict[str, Any]:
        return {"payload": b64encode(self.payload), "payloadType": self.payload_type,
                "signatures": [s.to_json() for s in self.signatures]}

    def canonical_bytes(self) -> bytes:
        return jcs(self.to_json())

    @classmethod
    def from_json(cls, doc: object, *, file: str | None = None, field: str = "envelope") -> Envelope:
        if not isinstance(doc, Mapping) or set(doc) != {"payload", "payloadType", "signatures"}:
            raise SignatureError("malformed DSSE envelope", file=file, field=field,
                                 expected="exactly the keys payload, payloadType, signatures")
        if not isinstance(doc["payloadType"], str) or not isinstance(doc["signatures"], list) or not doc["signatures"]:
            raise SignatureError("malformed DSSE envelope", file=file, field=field,
                                 expected="payloadType string and a non-empty signatures list")
        sigs = []
        for i, entry in enumerate(doc["signatures"]):
            where = f"{field}.signatures[{i}]"
            if not isinstance(entry, Mapping) or set(entry) != {"keyid", "sig"}:
                raise SignatureError("malformed signature entry", file=file, field=where,
                                     expected="exactly the keys keyid, sig")
            keyid = entry["keyid"]
            if not isinstance(keyid, str):
                raise SignatureError("keyid must be a string", file=file, field=where)
            sigs.append(Signature(keyid=check_digest(keyid, field=f"{where}.keyid", file=file),
                                  sig=b64decode(entry["sig"], field=f"{where}.sig", file=file)))
        return cls(payload_type=doc["payloadType"],
                   payload=b64decode(doc["payload"], field=f"{field}.payload", file=file),
                   signatures=tuple(sigs))

    def with_signature(self, key: PrivateKey) -> Envelope:
        """A copy with one more signature by ``key`` (refuses a second signature by the same key)."""
        if any(s.keyid == key.key_id for s in self.signatures):
            raise SignatureError("this key has already signed", field=key.key_id)
        sig = Signature(keyid=key.key_id, sig=key.sign(pae(self.payload_type, self.payload)))
        return Envelope(payload_type=self.payload_type, payload=self.payload, signatures=(*self.signatures, sig))


def sign_envelope(payload: bytes, *, payload_type: str, key: PrivateKey) -> Envelope:
    """Sign ``payload`` into a new envelope."""
    return Envelope(payload_type=payload_type, payload=payload, signatures=()).with_signature(key)


def verify_signature(envelope: Envelope, signature: Signature, public_key: PublicKey) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is a valid signature of ``envelope`` by ``public_key``."""
    if signature.keyid != public_key.key_id:
        raise SignatureError("signature key id does not match the key", field=signature.keyid,
                             expected=public_key.key_id)
    public_key.verify(signature.sig, pae(envelope.payload_type, envelope.payload))


def statement(*, subject_name: str, subject_digest: str, predicate_type: str, predicate: Mapping[str, Any]
              ) -> dict[str, Any]:
    """An in-toto Statement v1 with one subject named by a ``sha256:<hex>`` digest."""
    algo, _, hexdigest = check_digest(subject_digest, field="subject.digest").partition(":")
    return {"_type": IN_TOTO_STATEMENT_V1,
            "subject": [{"name": subject_name, "digest": {algo: hexdigest}}],
            "predicateType": predicate_type, "predicate": dict(predicate)}
