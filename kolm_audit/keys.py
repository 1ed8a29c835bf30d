"""Keys on disk: PKCS#8 private keys (optionally passphrase-encrypted), SPKI public keys.

Two key types: ``ecdsa-p256`` (ECDSA over P-256 with SHA-256, DER signatures, deterministic RFC 6979 nonces)
and ``ed25519`` (deterministic by design): signing the same bytes twice gives the same signature.
The key id is ``"sha256:" + sha256(DER SPKI)``.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> priv_path, pub_path = write_keypair(generate_key(key_type="ed25519"), d, name="k")
    >>> key = load_private_key(priv_path)
    >>> load_public_key(pub_path).verify(key.sign(b"hello"), b"hello")  # raises SignatureError if bad
    >>> key.key_id == load_public_key(pub_path).key_id
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from kolm_audit.canonical import digest
from kolm_audit.errors import InputError, KeyFileError, SignatureError

KeyType = Literal["ecdsa-p256", "ed25519"]
KEY_TYPES: tuple[KeyType, ...] = ("ecdsa-p256", "ed25519")

_PublicObj = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
_PrivateObj = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _type_of(key: _PublicObj | _PrivateObj) -> KeyType:
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(
            key.curve, ec.SECP256R1):
        return "ecdsa-p256"
    raise KeyFileError("unsupported key type", expected="ECDSA P-256 or Ed25519", actual=type(key).__name__)


@dataclass(frozen=True)
class PublicKey:
    """A verification key. ``verify`` raises :class:`SignatureError`; it never returns False."""

    key: _PublicObj

    def __post_init__(self) -> None:
        _type_of(self.key)

    @property
    def key_type(self) -> KeyType:
        return _type_of(self.key)

    def der(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def pem(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def key_id(self) -> str:
        return digest(self.der())

    def raw(self) -> bytes:
        """Raw 32-byte Ed25519 public key (for C2SP signed notes)."""
        if not isinstance(self.key, ed25519.Ed25519PublicKey):
            raise KeyFileError("raw public bytes exist for Ed25519 keys only", expected="ed25519",
                               actual=self.key_type)
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def verify(self, signature: bytes, data: bytes) -> None:
        try:
            if isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(signature, data)
            else:
                self.key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise SignatureError("signature does not verify", field=self.key_id) from None

    @classmethod
    def from_pem(cls, data: bytes, *, source: str | None = None) -> PublicKey:
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise KeyFileError(f"not a PEM SubjectPublicKeyInfo public key ({exc})", file=source,
                               expected="-----BEGIN PUBLIC KEY-----") from None
        if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
            raise KeyFileError("unsupported key type", file=source, expected="ECDSA P-256 or Ed25519")
        if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, ec.SECP256R1):
            raise KeyFileError("unsupported curve", file=source, expected="P-256", actual=key.curve.name)
        return cls(key=key)


@dataclass(frozen=True)
class PrivateKey:
    """A signing key. ``sign`` gives a DER ECDSA-SHA256 signature or a raw Ed25519 signature."""

    key: _PrivateObj

    def __post_init__(self) -> None:
        _type_of(self.key)

    @property
    def key_type(self) -> KeyType:
        return _type_of(self.key)

    def public_key(self) -> PublicKey:
        return PublicKey(key=self.key.public_key())

    @property
    def key_id(self) -> str:
        return self.public_key().key_id

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(data)
        # RFC 6979 deterministic nonces: the same key and bytes give the same signature, so a signed artifact
        # (or any signed document) is byte-reproducible, and no signature depends on a random number generator.
        return self.key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))

    def pem(self, *, passphrase: bytes | None = None) -> bytes:
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def generate_key(*, key_type: KeyType = "ecdsa-p256") -> PrivateKey:
    if key_type == "ed25519":
        return PrivateKey(key=ed25519.Ed25519PrivateKey.generate())
    if key_type == "ecdsa-p256":
        return PrivateKey(key=ec.generate_private_key(ec.SECP256R1()))
    raise InputError("unknown key type", field="--type", expected=" or ".join(KEY_TYPES), actual=str(key_type))


def write_keypair(key: PrivateKey, out_dir: str | Path, *, name: str = "key",
                  passphrase: bytes | None = None) -> tuple[Path, Path]:
    """Write ``<name>.pem`` (PKCS#8, mode 0600) and ``<name>.pub`` (SPKI PEM); refuse to overwrite."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out / f"{name}.pem", out / f"{name}.pub"
    for path in (priv_path, pub_path):
        if path.exists():
            raise InputError("refusing to overwrite an existing key file", file=str(path))
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.pem(passphrase=passphrase))
    pub_path.write_bytes(key.public_key().pem())
    return priv_path, pub_path


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file ({exc.strerror})", file=str(path)) from None


def passphrase_from_env(var: str | None) -> bytes | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise KeyFileError("passphrase environment variable is not set", field=var)
    return value.encode("utf-8")


def load_private_key(path: str | Path, *, passphrase_env: str | None = None) -> PrivateKey:
    """Load a PKCS#8 PEM private key; the passphrase (if any) comes from the env var ``passphrase_env``."""
    data = _read(path)
    passphrase = passphrase_from_env(passphrase_env)
    if b"ENCRYPTED PRIVATE KEY" in data and passphrase is None:
        raise KeyFileError("private key is encrypted and no passphrase was given", file=str(path),
                           expected="--passphrase-env VAR naming an env var that holds the passphrase")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        raise KeyFileError("private key is not encrypted but a passphrase was given", file=str(path)) from None
    except ValueError as exc:
        raise KeyFileError(f"cannot load private key: wrong passphrase or not PKCS#8 PEM ({exc})",
                           file=str(path)) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) or (
            isinstance(key, ec.EllipticCurvePrivateKey) and not isinstance(key.curve, ec.SECP256R1)):
        raise KeyFileError("unsupported key type", file=str(path), expected="ECDSA P-256 or Ed25519")
    return PrivateKey(key=key)


def load_public_key(path: str | Path) -> PublicKey:
    """Load an SPKI PEM public key."""
    data = _read(path)
    if b"PRIVATE KEY" in data:
        raise KeyFileError("this is a private key; verification takes the public key", file=str(path),
                           expected="-----BEGIN PUBLIC KEY-----")
    return PublicKey.from_pem(data, source=str(path))
