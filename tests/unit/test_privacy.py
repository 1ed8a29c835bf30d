"""Per-tenant privacy: KEK handling, key store, AES-256-GCM sealing with AAD binding, salted digests, shredding."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from kolm_audit.errors import InputError, KeyFileError, SchemaError, SignatureError
from kolm_audit.receipts.privacy import KeyEncryptionKey, KeyStore, TenantCrypto, is_sealed


@pytest.fixture
def kek() -> KeyEncryptionKey:
    return KeyEncryptionKey.generate()


@pytest.fixture
def store(kek: KeyEncryptionKey) -> KeyStore:
    return (KeyStore.empty()
            .with_tenant("acme", mode="encrypt-text", kek=kek)
            .with_tenant("globex", mode="encrypt-all", kek=kek)
            .with_tenant("open", mode="clear", kek=kek))


def test_kek_file_and_env_round_trip(tmp_path, kek, monkeypatch):
    path = kek.write(tmp_path / "kek.b64")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert KeyEncryptionKey.from_file(path) == kek
    monkeypatch.setenv("KOLM_TEST_KEK", base64.b64encode(kek.secret).decode())
    assert KeyEncryptionKey.from_env("KOLM_TEST_KEK") == kek
    with pytest.raises(InputError, match="overwrite"):
        kek.write(path)
    assert kek.secret.hex() not in repr(kek)


def test_kek_refuses_bad_material(tmp_path, monkeypatch):
    (tmp_path / "short").write_text(base64.b64encode(b"x" * 16).decode())
    with pytest.raises(KeyFileError, match="32 bytes"):
        KeyEncryptionKey.from_file(tmp_path / "short")
    (tmp_path / "junk").write_text("not base64!!")
    with pytest.raises(KeyFileError):
        KeyEncryptionKey.from_file(tmp_path / "junk")
    monkeypatch.delenv("KOLM_TEST_UNSET", raising=False)
    with pytest.raises(KeyFileError, match="not set"):
        KeyEncryptionKey.from_env("KOLM_TEST_UNSET")


def test_store_round_trip_and_schema(tmp_path, store, kek):
    path = store.write(tmp_path / "tenant-keys.json")
    loaded = KeyStore.load(path)
    assert loaded.doc == store.doc
    assert loaded.tenants == ("acme", "globex", "open")
    assert loaded.mode("globex") == "encrypt-all"
    doc = json.loads(path.read_text())
    doc["tenants"]["acme"]["extra"] = 1
    path.write_text(json.dumps(doc))
    with pytest.raises(SchemaError, match=r"tenants\.acme"):
        KeyStore.load(path)


@pytest.mark.parametrize("value", ["héllo wörld", ["a", 1, None], [101, 2023, 102], {"k": "v"}])
def test_seal_open_round_trip(store, kek, value):
    crypt = store.tenant("acme", kek=kek)
    sealed = crypt.seal(value, receipt_id="r-1", field="request.text")
    assert is_sealed(sealed)
    assert crypt.open(sealed, receipt_id="r-1", field="request.text") == value
    again = crypt.seal(value, receipt_id="r-1", field="request.text")
    assert again["nonce"] != sealed["nonce"] and again["ciphertext"] != sealed["ciphertext"]  # nonce per field


def test_aad_binds_receipt_field_and_tenant(store, kek):
    acme = store.tenant("acme", kek=kek)
    sealed = acme.seal("secret", receipt_id="r-1", field="request.text")
    with pytest.raises(SignatureError, match="moved"):
        acme.open(sealed, receipt_id="r-2", field="request.text")
    with pytest.raises(SignatureError, match="moved"):
        acme.open(sealed, receipt_id="r-1", field="response.text")
    # Same data key under another tenant name (e.g. a key store entry copied across): the AAD still refuses.
    impostor = TenantCrypto(tenant="globex", mode=acme.mode, salt=acme.salt, salt_id=acme.salt_id,
                            data_keys=acme.data_keys, active_key_id=acme.active_key_id)
    with pytest.raises(SignatureError):
        impostor.open(sealed, receipt_id="r-1", field="request.text")
    # Another tenant's real keys do not hold this key at all.
    with pytest.raises(KeyFileError, match="not in the key store"):
        store.tenant("globex", kek=kek).open(sealed, receipt_id="r-1", field="request.text")


def test_tampered_ciphertext_refused(store, kek):
    crypt = store.tenant("acme", kek=kek)
    sealed = crypt.seal("secret", receipt_id="r", field="f")
    raw = bytearray(base64.b64decode(sealed["ciphertext"]))
    raw[0] ^= 1
    with pytest.raises(SignatureError):
        crypt.open({**sealed, "ciphertext": base64.b64encode(bytes(raw)).decode()}, receipt_id="r", field="f")


def test_wrong_kek_and_moved_wrapped_key_refused(store, kek):
    with pytest.raises(KeyFileError, match="different key-encryption key"):
        store.tenant("acme", kek=KeyEncryptionKey.generate())
    # Copy acme's wrapped keys under globex's name: unwrapping is bound to the tenant.
    doc = json.loads(json.dumps(store.doc))
    doc["tenants"]["globex"] = doc["tenants"]["acme"]
    with pytest.raises(KeyFileError, match="cannot unwrap"):
        KeyStore(doc=doc).tenant("globex", kek=kek)
    with pytest.raises(KeyFileError, match="key-encryption key is needed"):
        store.tenant("acme", kek=None)
    with pytest.raises(KeyFileError, match="no entry"):
        store.tenant("nobody", kek=kek)


def test_salted_digest_per_tenant(store, kek):
    acme, globex = store.tenant("acme", kek=kek), store.tenant("globex", kek=kek)
    assert acme.text_digest("same text") == acme.text_digest("same text")
    assert acme.text_digest("same text") != globex.text_digest("same text")
    assert acme.text_digest("same text") != acme.text_digest("same text!")
    assert acme.text_digest("x").startswith("hmac-sha256:")
    assert TenantCrypto.clear("t").text_digest("x").startswith("sha256:")


def test_rotation_keeps_old_values_readable(store, kek):
    before = store.tenant("acme", kek=kek)
    old = before.seal("old", receipt_id="r", field="f")
    rotated = store.rotate("acme", kek=kek)
    after = rotated.tenant("acme", kek=kek)
    assert after.active_key_id != before.active_key_id
    assert after.open(old, receipt_id="r", field="f") == "old"
    assert after.seal("new", receipt_id="r", field="f")["key_id"] == after.active_key_id
    states = [k["state"] for k in rotated.doc["tenants"]["acme"]["data_keys"]]
    assert states == ["retired", "active"]


def test_crypto_shredding(tmp_path, store, kek):
    crypt = store.tenant("acme", kek=kek)
    sealed = crypt.seal("erase me", receipt_id="r", field="request.text")
    digest_before = crypt.text_digest("erase me")
    wrapped = store.doc["tenants"]["acme"]["data_keys"][0]["wrapped"]["ciphertext"]
    path = store.shred("acme").write(tmp_path / "keys.json")
    assert wrapped not in path.read_text()  # the key material is gone from the file
    shredded = KeyStore.load(path).tenant("acme", kek=kek)
    with pytest.raises(KeyFileError, match="shredded"):
        shredded.open(sealed, receipt_id="r", field="request.text")
    with pytest.raises(KeyFileError, match="no active data key"):
        shredded.seal("more", receipt_id="r2", field="request.text")
    assert shredded.text_digest("erase me") == digest_before  # salt kept: matching still possible
    # Other tenants are untouched.
    globex = KeyStore.load(path).tenant("globex", kek=kek)
    assert globex.open(globex.seal("x", receipt_id="r", field="f"), receipt_id="r", field="f") == "x"
    forgotten = KeyStore.load(path).shred("acme", forget_salt=True).tenant("acme", kek=kek)
    with pytest.raises(KeyFileError, match="salt was shredded"):
        forgotten.text_digest("erase me")


def test_shred_single_key_and_errors(store, kek):
    rotated = store.rotate("acme", kek=kek)
    first = rotated.doc["tenants"]["acme"]["data_keys"][0]["key_id"]
    after = rotated.shred("acme", key_id=first).tenant("acme", kek=kek)
    assert first in after.shredded and after.active_key_id not in after.shredded
    with pytest.raises(InputError, match="no such data key"):
        rotated.shred("acme", key_id="sha256:" + "0" * 64)
    with pytest.raises(InputError, match="already"):
        store.with_tenant("acme", mode="clear", kek=kek)
    with pytest.raises(InputError, match="unknown privacy mode"):
        store.with_tenant("new", mode="rot13", kek=kek)  # type: ignore[arg-type]


def test_rewrap_under_a_new_kek(store, kek):
    crypt = store.tenant("globex", kek=kek)
    sealed = crypt.seal([1, 2, 3], receipt_id="r", field="request.input_ids")
    new_kek = KeyEncryptionKey.generate()
    rewrapped = store.shred("acme").rewrap(old=kek, new=new_kek)
    again = rewrapped.tenant("globex", kek=new_kek)
    assert again.open(sealed, receipt_id="r", field="request.input_ids") == [1, 2, 3]
    assert again.text_digest("t") == crypt.text_digest("t")
    with pytest.raises(KeyFileError, match="different key-encryption key"):
        rewrapped.tenant("globex", kek=kek)
    assert rewrapped.tenant("acme", kek=new_kek).active_key_id is None  # shredded stays shredded
