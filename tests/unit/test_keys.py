"""Keys on disk: generation, PEM round trips, passphrases, key ids, refusals."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kolm_audit.errors import InputError, KeyFileError, SignatureError
from kolm_audit.keys import KEY_TYPES, generate_key, load_private_key, load_public_key, write_keypair


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_round_trip_sign_verify(tmp_path: Path, key_type: str) -> None:
    key = generate_key(key_type=key_type)  # type: ignore[arg-type]
    priv, pub = write_keypair(key, tmp_path, name="k")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    loaded = load_private_key(priv)
    public = load_public_key(pub)
    assert loaded.key_type == public.key_type == key_type
    assert loaded.key_id == public.key_id == key.key_id == "sha256:" + hashlib.sha256(public.der()).hexdigest()
    public.verify(loaded.sign(b"msg"), b"msg")
    with pytest.raises(SignatureError, match="does not verify"):
        public.verify(loaded.sign(b"msg"), b"msh")


def test_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key(key_type="ed25519")
    priv, _ = write_keypair(key, tmp_path, name="k", passphrase=b"s3cret")
    assert b"ENCRYPTED PRIVATE KEY" in priv.read_bytes()
    with pytest.raises(KeyFileError, match="encrypted and no passphrase"):
        load_private_key(priv)
    with pytest.raises(KeyFileError, match="environment variable is not set"):
        load_private_key(priv, passphrase_env="KOLM_TEST_UNSET_VAR")
    monkeypatch.setenv("KOLM_TEST_PASS", "wrong")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_private_key(priv, passphrase_env="KOLM_TEST_PASS")
    monkeypatch.setenv("KOLM_TEST_PASS", "s3cret")
    assert load_private_key(priv, passphrase_env="KOLM_TEST_PASS").key_id == key.key_id
    plain, _ = write_keypair(key, tmp_path, name="plain")
    with pytest.raises(KeyFileError, match="not encrypted but a passphrase was given"):
        load_private_key(plain, passphrase_env="KOLM_TEST_PASS")


def test_refusals(tmp_path: Path) -> None:
    key = generate_key()
    priv, _ = write_keypair(key, tmp_path, name="k")
    with pytest.raises(InputError, match="refusing to overwrite"):
        write_keypair(key, tmp_path, name="k")
    with pytest.raises(KeyFileError, match="this is a private key"):
        load_public_key(priv)
    with pytest.raises(KeyFileError, match="not a PEM SubjectPublicKeyInfo"):
        load_public_key(_write(tmp_path, "x.pub", b"junk"))
    with pytest.raises(KeyFileError, match="cannot read key file"):
        load_private_key(tmp_path / "missing.pem")
    with pytest.raises(InputError, match="unknown key type"):
        generate_key(key_type="rsa")  # type: ignore[arg-type]
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(KeyFileError, match="unsupported key type"):
        load_private_key(_write(tmp_path, "rsa.pem", rsa_pem))
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(KeyFileError, match="unsupported curve"):
        load_public_key(_write(tmp_path, "p384.pub", p384))


def test_raw_ed25519_only() -> None:
    assert len(generate_key(key_type="ed25519").public_key().raw()) == 32
    with pytest.raises(KeyFileError, match="Ed25519 keys only"):
        generate_key(key_type="ecdsa-p256").public_key().raw()


def _write(d: Path, name: str, data: bytes) -> Path:
    (d / name).write_bytes(data)
    return d / name


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "ed25519"])
def test_signatures_are_deterministic(key_type: str) -> None:
    """RFC 6979 for ECDSA: a signed file is byte-reproducible (compile's two-build check relies on it)."""
    key = generate_key(key_type=key_type)  # type: ignore[arg-type]
    assert key.sign(b"same bytes") == key.sign(b"same bytes")
    assert key.sign(b"same bytes") != key.sign(b"other bytes")
    key.public_key().verify(key.sign(b"same bytes"), b"same bytes")
