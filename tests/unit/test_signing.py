"""DSSE envelopes and in-toto statements: PAE spec vector, strict parsing, multi-signature."""

from __future__ import annotations

import pytest

from kolm_audit.errors import SchemaError, SignatureError
from kolm_audit.keys import generate_key
from kolm_audit.signing import (
    IN_TOTO_STATEMENT_V1,
    Envelope,
    b64decode,
    pae,
    sign_envelope,
    statement,
    verify_signature,
)


def test_pae_spec_vector() -> None:
    # DSSE protocol.md example
    assert pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert pae("t", b"") == b"DSSEv1 1 t 0 "
    assert pae("\u00e9", b"x") == b"DSSEv1 2 \xc3\xa9 1 x"   # lengths count bytes


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "ed25519"])
def test_sign_verify_round_trip(key_type: str) -> None:
    key = generate_key(key_type=key_type)  # type: ignore[arg-type]
    env = sign_envelope(b'{"a":1}', payload_type="application/json", key=key)
    verify_signature(env, env.signatures[0], key.public_key())
    assert Envelope.from_json(env.to_json()) == env
    tampered = Envelope(payload_type=env.payload_type, payload=b'{"a":2}', signatures=env.signatures)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signature(tampered, env.signatures[0], key.public_key())
    other_type = Envelope(payload_type="text/plain", payload=env.payload, signatures=env.signatures)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signature(other_type, env.signatures[0], key.public_key())
    with pytest.raises(SignatureError, match="key id does not match"):
        verify_signature(env, env.signatures[0], generate_key().public_key())


def test_multiple_signatures_and_no_double_signing() -> None:
    k1, k2 = generate_key(key_type="ed25519"), generate_key()
    env = sign_envelope(b"x", payload_type="t", key=k1).with_signature(k2)
    assert [s.keyid for s in env.signatures] == [k1.key_id, k2.key_id]
    for sig, key in zip(env.signatures, (k1, k2), strict=True):
        verify_signature(env, sig, key.public_key())
    with pytest.raises(SignatureError, match="already signed"):
        env.with_signature(k1)


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("payloadType"),
    lambda d: d.update(extra=1),
    lambda d: d.update(signatures=[]),
    lambda d: d.update(payloadType=5),
    lambda d: d.update(payload="not base64!"),
    lambda d: d.update(payload="eA"),            # missing padding: non-canonical
    lambda d: d["signatures"][0].update(extra="x"),
    lambda d: d["signatures"][0].update(keyid=3),
    lambda d: d["signatures"][0].update(sig=""),
])
def test_from_json_is_strict(mutate: object) -> None:
    doc = sign_envelope(b"x", payload_type="t", key=generate_key(key_type="ed25519")).to_json()
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(SignatureError):
        Envelope.from_json(doc, file="f", field="env")


def test_bad_keyid_is_schema_error() -> None:
    doc = sign_envelope(b"x", payload_type="t", key=generate_key(key_type="ed25519")).to_json()
    doc["signatures"][0]["keyid"] = "sha256:XYZ"
    with pytest.raises(SchemaError, match="malformed digest"):
        Envelope.from_json(doc)


def test_b64decode_strict() -> None:
    assert b64decode("aGk=", field="f") == b"hi"
    for bad in ("aGk", "aG k=", "aGk=\n", 7):
        with pytest.raises(SignatureError):
            b64decode(bad, field="f")


def test_statement() -> None:
    dig = "sha256:" + "ab" * 32
    stmt = statement(subject_name="m", subject_digest=dig, predicate_type="https://x/v1", predicate={"k": 1})
    assert stmt == {"_type": IN_TOTO_STATEMENT_V1, "subject": [{"name": "m", "digest": {"sha256": "ab" * 32}}],
                    "predicateType": "https://x/v1", "predicate": {"k": 1}}
    with pytest.raises(SchemaError):
        statement(subject_name="m", subject_digest="md5:00", predicate_type="p", predicate={})
