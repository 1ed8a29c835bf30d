"""C2SP signed-note checkpoints: exact format, key hash, strict parsing, trust."""

from __future__ import annotations

import base64
import hashlib

import pytest

from kolm_audit.errors import InputError, LogError, SignatureError, TrustError
from kolm_audit.keys import generate_key
from kolm_audit.log.checkpoint import (
    Checkpoint,
    key_hash,
    parse_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
    vkey,
)
from kolm_audit.schemas import validate
from kolm_audit.trust import TrustedKey, TrustPolicy

ORIGIN = "example.org/log"
ROOT = hashlib.sha256(b"root").digest()


@pytest.fixture(scope="module")
def key():  # type: ignore[no-untyped-def]
    return generate_key(key_type="ed25519")


def _policy(key, roles=("checkpoint",)) -> TrustPolicy:  # type: ignore[no-untyped-def]
    return TrustPolicy.from_public_key(key.public_key(), roles=roles)


def test_note_bytes_follow_the_spec(key) -> None:  # type: ignore[no-untyped-def]
    note = sign_checkpoint(Checkpoint(origin=ORIGIN, size=42, root=ROOT), key)
    body = f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}\n"
    assert note.startswith(body + "\n— " + ORIGIN + " ")
    assert note.endswith("\n") and note.count("\n") == 5
    raw = base64.b64decode(note.splitlines()[-1].split(" ")[2])
    pub = key.public_key().raw()
    assert raw[:4] == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + pub).digest()[:4]
    key.public_key().verify(raw[4:], body.encode())  # Ed25519 over the body bytes
    assert len(raw) == 68


def test_vkey_format(key) -> None:  # type: ignore[no-untyped-def]
    name, hash_hex, b64 = vkey(ORIGIN, key.public_key()).split("+", 2)
    assert name == ORIGIN and bytes.fromhex(hash_hex) == key_hash(ORIGIN, key.public_key())
    assert base64.b64decode(b64) == b"\x01" + key.public_key().raw()


def test_roundtrip_and_verify(key) -> None:  # type: ignore[no-untyped-def]
    note = sign_checkpoint(Checkpoint(origin=ORIGIN, size=7, root=ROOT), key)
    parsed = verify_checkpoint(note, policy=_policy(key))
    assert parsed.checkpoint == Checkpoint(origin=ORIGIN, size=7, root=ROOT)
    assert parsed.text == note
    assert [s.role for s in parsed.signers] == ["checkpoint"]
    validate(parsed.to_json(), "checkpoint")


@pytest.mark.parametrize("mutate", [
    lambda n: n.replace("\n7\n", "\n8\n"),                       # size changed
    lambda n: n.replace("\n7\n", "\n07\n"),                      # leading zero
    lambda n: n.replace(ORIGIN + "\n", "example.org/other\n", 1),  # origin changed
    lambda n: n.rstrip("\n"),                                    # no final newline
    lambda n: n.replace("\n\n", "\n"),                           # no blank line
    lambda n: n.replace("— ", "- "),                             # wrong dash
    lambda n: n + "junk\n",                                      # trailing garbage line
    lambda n: n.replace("\n", "\r\n"),                           # CRLF
    lambda n: n.split("\n\n")[0] + "\n\n",                       # no signature
])
def test_tampered_or_malformed_notes_are_rejected(key, mutate) -> None:  # type: ignore[no-untyped-def]
    note = sign_checkpoint(Checkpoint(origin=ORIGIN, size=7, root=ROOT), key)
    bad = mutate(note)
    assert bad != note
    with pytest.raises((LogError, SignatureError)):
        verify_checkpoint(bad, policy=_policy(key))


def test_every_single_byte_change_is_detected(key) -> None:  # type: ignore[no-untyped-def]
    note = sign_checkpoint(Checkpoint(origin=ORIGIN, size=7, root=ROOT), key).encode()
    policy = _policy(key)
    for i in range(len(note)):
        bad = bytearray(note)
        bad[i] ^= 0x01
        with pytest.raises((LogError, SignatureError, TrustError)):
            verify_checkpoint(bytes(bad), policy=policy)


def test_unknown_key_only_is_a_trust_error(key) -> None:  # type: ignore[no-untyped-def]
    note = sign_checkpoint(Checkpoint(origin=ORIGIN, size=1, root=ROOT), key)
    with pytest.raises(TrustError):
        verify_checkpoint(note, policy=_policy(generate_key(key_type="ed25519")))


def test_wrong_role_is_a_trust_error(key) -> None:  # type: ignore[no-untyped-def]
    note = sign_checkpoint(Checkpoint(origin=ORIGIN, size=1, root=ROOT), key)
    with pytest.raises(TrustError):
        verify_checkpoint(note, policy=_policy(key, roles=("receipt",)))


def test_extra_witness_signature_is_ignored(key) -> None:  # type: ignore[no-untyped-def]
    cp = Checkpoint(origin=ORIGIN, size=3, root=ROOT)
    witness = generate_key(key_type="ed25519")
    mine = sign_checkpoint(cp, key)
    theirs = sign_checkpoint(cp, witness, name="witness.example")
    combined = mine + theirs.split("\n\n")[1]
    parsed = verify_checkpoint(combined, policy=_policy(key))
    assert len(parsed.signatures) == 2 and len(parsed.signers) == 1
    both = TrustPolicy(keys=(TrustedKey(name="log", public_key=key.public_key(), roles=frozenset({"checkpoint"})),
                             TrustedKey(name="w", public_key=witness.public_key(), roles=frozenset({"checkpoint"}))))
    assert len(verify_checkpoint(combined, policy=both).signers) == 2


def test_forged_signature_by_known_key_fails(key) -> None:  # type: ignore[no-untyped-def]
    cp = Checkpoint(origin=ORIGIN, size=3, root=ROOT)
    note = sign_checkpoint(cp, key)
    other = sign_checkpoint(Checkpoint(origin=ORIGIN, size=4, root=ROOT), key)
    spliced = note.split("\n\n")[0] + "\n\n" + other.split("\n\n")[1]
    with pytest.raises(SignatureError):
        verify_checkpoint(spliced, policy=_policy(key))


def test_ecdsa_keys_cannot_sign_notes() -> None:
    with pytest.raises(InputError):
        sign_checkpoint(Checkpoint(origin=ORIGIN, size=0, root=ROOT), generate_key(key_type="ecdsa-p256"))


def test_parse_does_not_check_signatures(key) -> None:  # type: ignore[no-untyped-def]
    note = sign_checkpoint(Checkpoint(origin=ORIGIN, size=9, root=ROOT), key)
    assert parse_checkpoint(note).checkpoint.size == 9
    assert parse_checkpoint(note).signers == ()
