"""Per-tenant privacy for receipts: text in clear or AES-256-GCM encrypted, salted digests, crypto-shredding.

Three modes per tenant (``docs/privacy.md`` says what each allows, before and after shredding):

* ``clear`` — texts and token ids in clear;
* ``encrypt-text`` — texts sealed, token ids (and classifier labels/scores) in clear: replay never needs a key;
* ``encrypt-all`` — texts, token ids, labels and scores sealed: replay needs the tenant's data key.

Every text is always accompanied by a salted digest (``hmac-sha256:<hex>``: HMAC-SHA256 keyed by the tenant's
salt) so a known text can be matched without any receipt being decrypted, and token ids by their plain
digest (replay compares it). A *sealed* value is ``{"alg": "A256GCM", "key_id": ..., "nonce": ...,
"ciphertext": ...}``: AES-256-GCM of ``JCS(value)`` under the tenant's data key with a fresh 96-bit nonce and
associated data ``JCS({"field", "key_id", "receipt_id", "tenant"})``, so a ciphertext moved to another
receipt, field or tenant does not open.

Data keys and salts live in a key store file (``kolm.tenant-keys/1``, schema ``schemas/tenant-keys.schema.json``),
wrapped (AES-256-GCM) by a key-encryption key (KEK) read from a file or an environment variable.
Crypto-shredding (:meth:`KeyStore.shred`) deletes the wrapped data keys: sealed values become unreadable
for good, while signatures, digests, log proofs and replay from clear ids still verify.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> kek = KeyEncryptionKey.generate()
    >>> store = KeyStore.empty().with_tenant("acme", mode="encrypt-text", kek=kek)
    >>> path = store.write(d / "tenant-keys.json")
    >>> crypt = KeyStore.load(path).tenant("acme", kek=kek)
    >>> sealed = crypt.seal("hello", receipt_id="r1", field="request.text")
    >>> crypt.open(sealed, receipt_id="r1", field="request.text")
    'hello'
    >>> crypt.text_digest("hello") == crypt.text_digest("hello")
    True
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kolm_audit._atomic import write_atomic
from kolm_audit.canonical import digest, jcs, loads_strict
from kolm_audit.errors import InputError, KeyFileError, SchemaError, SignatureError
from kolm_audit.schemas import validate
from kolm_audit.timefmt import format_time, now

PrivacyMode = Literal["clear", "encrypt-text", "encrypt-all"]
MODES: tuple[PrivacyMode, ...] = ("clear", "encrypt-text", "encrypt-all")
KEYSTORE_SCHEMA = "kolm.tenant-keys/1"
ALG = "A256GCM"
_KEY_BYTES = 32
_NONCE_BYTES = 12


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, *, field: str, file: str | None = None, error: type[Exception] = SchemaError) -> bytes:
    if not isinstance(text, str):
        raise error("expected base64 text", file=file, field=field)  # type: ignore[call-arg]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise error("invalid base64", file=file, field=field) from None  # type: ignore[call-arg]
    if _b64(raw) != text:
        raise error("non-canonical base64", file=file, field=field)  # type: ignore[call-arg]
    return raw


def _secret_id(kind: bytes, secret: bytes) -> str:
    """A public id for a 256-bit random secret (domain-separated hash; reveals nothing usable)."""
    return digest(b"kolm-" + kind + b"-id\x00" + secret)


@dataclass(frozen=True)
class KeyEncryptionKey:
    """The 256-bit key that wraps every tenant data key and salt (kept outside the key store)."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != _KEY_BYTES:
            raise KeyFileError("key-encryption key must be 32 bytes", expected="32 bytes (or 44 base64 chars)",
                               actual=f"{len(self.secret)} bytes")

    def __repr__(self) -> str:
        return f"KeyEncryptionKey(key_id={self.key_id!r})"

    @property
    def key_id(self) -> str:
        return _secret_id(b"kek", self.secret)

    @classmethod
    def generate(cls) -> KeyEncryptionKey:
        return cls(secret=secrets.token_bytes(_KEY_BYTES))

    @classmethod
    def from_text(cls, text: str, *, source: str | None = None) -> KeyEncryptionKey:
        raw = _unb64(text.strip(), field="key-encryption key", file=source, error=KeyFileError)
        if len(raw) != _KEY_BYTES:
            raise KeyFileError("key-encryption key must be 32 bytes", file=source,
                               expected="base64 of 32 random bytes", actual=f"{len(raw)} bytes")
        return cls(secret=raw)

    @classmethod
    def from_file(cls, path: str | Path) -> KeyEncryptionKey:
        """A file holding the base64 of 32 random bytes (as :meth:`write` makes it)."""
        try:
            text = Path(path).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"cannot read key-encryption key ({exc})", file=str(path)) from None
        return cls.from_text(text, source=str(path))

    @classmethod
    def from_env(cls, var: str) -> KeyEncryptionKey:
        value = os.environ.get(var)
        if value is None:
            raise KeyFileError("key-encryption key environment variable is not set", field=var)
        return cls.from_text(value, source=f"${var}")

    def write(self, path: str | Path) -> Path:
        """Write the base64 key to a new file (mode 0600); refuse to overwrite."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise InputError("refusing to overwrite an existing key file", file=str(path)) from None
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(_b64(self.secret) + "\n")
        return path


def _wrap_aad(*, tenant: str, purpose: str, key_id: str, kek_id: str) -> bytes:
    return jcs({"kek_id": kek_id, "key_id": key_id, "purpose": purpose, "tenant": tenant})


def _wrap(kek: KeyEncryptionKey, secret: bytes, *, tenant: str, purpose: str, key_id: str) -> dict[str, str]:
    nonce = secrets.token_bytes(_NONCE_BYTES)
    aad = _wrap_aad(tenant=tenant, purpose=purpose, key_id=key_id, kek_id=kek.key_id)
    return {"alg": ALG, "kek_id": kek.key_id, "nonce": _b64(nonce),
            "ciphertext": _b64(AESGCM(kek.secret).encrypt(nonce, secret, aad))}


def _unwrap(kek: KeyEncryptionKey, wrapped: Mapping[str, str], *, tenant: str, purpose: str, key_id: str,
            source: str | None) -> bytes:
    where = f"tenants.{tenant}.{purpose}[{key_id}]"
    if wrapped["kek_id"] != kek.key_id:
        raise KeyFileError("wrapped under a different key-encryption key", file=source, field=where,
                           expected=wrapped["kek_id"], actual=kek.key_id)
    aad = _wrap_aad(tenant=tenant, purpose=purpose, key_id=key_id, kek_id=kek.key_id)
    try:
        secret = AESGCM(kek.secret).decrypt(_unb64(wrapped["nonce"], field=where, file=source),
                                            _unb64(wrapped["ciphertext"], field=where, file=source), aad)
    except InvalidTag:
        raise KeyFileError("cannot unwrap key (tampered key store or wrong tenant)", file=source,
                           field=where) from None
    if _secret_id(purpose.encode(), secret) != key_id:
        raise KeyFileError("unwrapped key does not match its id", file=source, field=where)
    return secret


@dataclass(frozen=True)
class KeyStore:
    """The tenant key store document (``kolm.tenant-keys/1``); immutable: edits return a new store."""

    doc: Mapping[str, Any]
    source: str | None = None

    def __post_init__(self) -> None:
        validate(self.doc, "tenant-keys", source=self.source)

    @classmethod
    def empty(cls) -> KeyStore:
        return cls(doc={"schema": KEYSTORE_SCHEMA, "tenants": {}})

    @classmethod
    def load(cls, path: str | Path) -> KeyStore:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read tenant key store ({exc.strerror})", file=str(path)) from None
        return cls(doc=loads_strict(data, file=str(path)), source=str(path))

    def write(self, path: str | Path) -> Path:
        """Write atomically (temp file, fsync, rename), mode 0600."""
        data = (json.dumps(self.doc, indent=2, sort_keys=True) + "\n").encode("utf-8")
        return write_atomic(path, data, what="tenant key store", mode=0o600)

    @property
    def tenants(self) -> tuple[str, ...]:
        return tuple(sorted(self.doc["tenants"]))

    def mode(self, tenant: str) -> PrivacyMode:
        return cast(PrivacyMode, self._entry(tenant)["mode"])

    def _entry(self, tenant: str) -> Mapping[str, Any]:
        entry = self.doc["tenants"].get(tenant)
        if entry is None:
            raise KeyFileError("tenant has no entry in the key store", file=self.source, field=tenant,
                                     expected="a tenant added with a privacy mode")
        return cast(Mapping[str, Any], entry)

    def _with_entry(self, tenant: str, entry: Mapping[str, Any]) -> KeyStore:
        tenants = dict(self.doc["tenants"])
        tenants[tenant] = entry
        return replace(self, doc={**self.doc, "tenants": tenants})

    def with_tenant(self, tenant: str, *, mode: PrivacyMode, kek: KeyEncryptionKey) -> KeyStore:
        """Add a tenant with a fresh salt (and a fresh data key unless the mode is ``clear``)."""
        if tenant in self.doc["tenants"]:
            raise InputError("tenant already in the key store", file=self.source, field=tenant)
        if mode not in MODES:
            raise InputError("unknown privacy mode", field="mode", expected=" | ".join(MODES), actual=str(mode))
        salt = secrets.token_bytes(_KEY_BYTES)
        salt_id = _secret_id(b"salt", salt)
        entry = {"mode": mode, "salt": {"salt_id": salt_id, **_wrap(kek, salt, tenant=tenant, purpose="salt",
                                                                     key_id=salt_id)},
                 "data_keys": []}
        store = self._with_entry(tenant, entry)
        return store.rotate(tenant, kek=kek) if mode != "clear" else store

    def rotate(self, tenant: str, *, kek: KeyEncryptionKey) -> KeyStore:
        """Add a new active data key for ``tenant``; older keys stay for opening older receipts."""
        entry = self._entry(tenant)
        secret = secrets.token_bytes(_KEY_BYTES)
        key_id = _secret_id(b"data_key", secret)
        new_key = {"key_id": key_id, "created": format_time(now()), "state": "active",
                   "wrapped": _wrap(kek, secret, tenant=tenant, purpose="data_key", key_id=key_id)}
        old = [{**k, "state": "retired"} if k["state"] == "active" else k for k in entry["data_keys"]]
        return self._with_entry(tenant, {**entry, "data_keys": [*old, new_key]})

    def shred(self, tenant: str, *, key_id: str | None = None, forget_salt: bool = False) -> KeyStore:
        """Crypto-shred: delete the wrapped data key(s) of ``tenant`` (all, or one ``key_id``).

        With ``forget_salt`` the salt is deleted too, so salted digests can no longer be matched either.
        Only the key material goes; ids and the shredding time stay so a later reader learns why a value
        cannot be opened. (Copies of the store in backups must be destroyed as well: see docs/privacy.md.)
        """
        entry = self._entry(tenant)
        stamp = format_time(now())
        found = False
        keys = []
        for k in entry["data_keys"]:
            if key_id is None or k["key_id"] == key_id:
                found = True
                k = {"key_id": k["key_id"], "created": k["created"], "state": "shredded",
                     "shredded": k.get("shredded", stamp)}
            keys.append(k)
        if key_id is not None and not found:
            raise InputError("no such data key for this tenant", file=self.source, field=tenant, actual=key_id)
        new_entry: dict[str, Any] = {**entry, "data_keys": keys}
        if forget_salt:
            new_entry["salt"] = {"salt_id": entry["salt"]["salt_id"], "shredded": stamp}
        return self._with_entry(tenant, new_entry)

    def rewrap(self, *, old: KeyEncryptionKey, new: KeyEncryptionKey) -> KeyStore:
        """Re-wrap every remaining salt and data key under a new KEK (then destroy the old KEK)."""
        tenants: dict[str, Any] = {}
        for name, entry in self.doc["tenants"].items():
            salt = dict(entry["salt"])
            if "ciphertext" in salt:
                secret = _unwrap(old, salt, tenant=name, purpose="salt", key_id=salt["salt_id"], source=self.source)
                salt = {"salt_id": salt["salt_id"], **_wrap(new, secret, tenant=name, purpose="salt",
                                                            key_id=salt["salt_id"])}
            keys = []
            for k in entry["data_keys"]:
                if "wrapped" in k:
                    secret = _unwrap(old, k["wrapped"], tenant=name, purpose="data_key", key_id=k["key_id"],
                                     source=self.source)
                    k = {**k, "wrapped": _wrap(new, secret, tenant=name, purpose="data_key", key_id=k["key_id"])}
                keys.append(k)
            tenants[name] = {**entry, "salt": salt, "data_keys": keys}
        return replace(self, doc={**self.doc, "tenants": tenants})

    def tenant(self, tenant: str, *, kek: KeyEncryptionKey | None) -> TenantCrypto:
        """Unwrap ``tenant``'s salt and data keys (shredded keys are simply absent)."""
        entry = self._entry(tenant)
        if kek is None:
            raise KeyFileError("a key-encryption key is needed to use the key store", file=self.source,
                                     expected="--kek-file FILE or --kek-env VAR")
        salt_entry = entry["salt"]
        salt = None
        if "ciphertext" in salt_entry:
            salt = _unwrap(kek, salt_entry, tenant=tenant, purpose="salt", key_id=salt_entry["salt_id"],
                           source=self.source)
        keys: dict[str, bytes] = {}
        shredded: set[str] = set()
        active = None
        for k in entry["data_keys"]:
            if k["state"] == "shredded":
                shredded.add(k["key_id"])
                continue
            keys[k["key_id"]] = _unwrap(kek, k["wrapped"], tenant=tenant, purpose="data_key", key_id=k["key_id"],
                                        source=self.source)
            if k["state"] == "active":
                active = k["key_id"]
        return TenantCrypto(tenant=tenant, mode=cast(PrivacyMode, entry["mode"]), salt=salt,
                            salt_id=salt_entry["salt_id"], data_keys=keys, active_key_id=active,
                            shredded=frozenset(shredded))


def field_aad(*, tenant: str, receipt_id: str, field: str, key_id: str) -> bytes:
    """Associated data binding a sealed value to its tenant, receipt, field and key."""
    return jcs({"field": field, "key_id": key_id, "receipt_id": receipt_id, "tenant": tenant})


def is_sealed(value: object) -> bool:
    return isinstance(value, Mapping) and value.get("alg") == ALG


@dataclass(frozen=True)
class TenantCrypto:
    """One tenant's unwrapped secrets: seal/open receipt fields and compute salted digests.

    ``TenantCrypto.clear(tenant)`` is the no-key-store form: mode ``clear``, unsalted ``sha256:`` text digests.
    """

    tenant: str
    mode: PrivacyMode
    salt: bytes | None
    salt_id: str | None
    data_keys: Mapping[str, bytes]
    active_key_id: str | None
    shredded: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError("unknown privacy mode", field="mode", expected=" | ".join(MODES), actual=str(self.mode))

    def __repr__(self) -> str:
        return f"TenantCrypto(tenant={self.tenant!r}, mode={self.mode!r}, keys={sorted(self.data_keys)!r})"

    @classmethod
    def clear(cls, tenant: str) -> TenantCrypto:
        return cls(tenant=tenant, mode="clear", salt=None, salt_id=None, data_keys={}, active_key_id=None)

    @property
    def seals_text(self) -> bool:
        return self.mode in ("encrypt-text", "encrypt-all")

    @property
    def seals_ids(self) -> bool:
        return self.mode == "encrypt-all"

    def text_digest(self, text: str) -> str:
        """``hmac-sha256:<hex>`` with the tenant salt, or plain ``sha256:<hex>`` without a key store."""
        data = text.encode("utf-8")
        if self.salt is None:
            if self.salt_id is not None:
                raise KeyFileError("the tenant's salt was shredded", field=self.tenant)
            return digest(data)
        return "hmac-sha256:" + hmac.new(self.salt, data, hashlib.sha256).hexdigest()

    def seal(self, value: Any, *, receipt_id: str, field: str) -> dict[str, str]:
        if self.active_key_id is None:
            raise KeyFileError(f"tenant '{self.tenant}' has no active data key (shredded?)", field=self.tenant,
                               expected="a data key: KeyStore.rotate(tenant) makes a new one")
        key_id = self.active_key_id
        nonce = secrets.token_bytes(_NONCE_BYTES)
        aad = field_aad(tenant=self.tenant, receipt_id=receipt_id, field=field, key_id=key_id)
        return {"alg": ALG, "ciphertext": _b64(AESGCM(self.data_keys[key_id]).encrypt(nonce, jcs(value), aad)),
                "key_id": key_id, "nonce": _b64(nonce)}

    def open(self, sealed: Mapping[str, Any], *, receipt_id: str, field: str) -> Any:
        """Decrypt a sealed value; :class:`SignatureError` if it was moved or altered."""
        key_id = sealed["key_id"]
        if key_id not in self.data_keys:
            why = "was shredded" if key_id in self.shredded else "is not in the key store"
            raise KeyFileError(f"data key {why}; the value cannot be read", field=field, actual=key_id)
        aad = field_aad(tenant=self.tenant, receipt_id=receipt_id, field=field, key_id=key_id)
        try:
            plain = AESGCM(self.data_keys[key_id]).decrypt(_unb64(sealed["nonce"], field=field),
                                                           _unb64(sealed["ciphertext"], field=field), aad)
        except InvalidTag:
            raise SignatureError("sealed value does not open: altered, or moved from another receipt, field or "
                                 "tenant", field=field) from None
        return loads_strict(plain, field=field)

    def maybe_seal(self, value: Any, *, receipt_id: str, field: str, sensitive: bool) -> Any:
        return self.seal(value, receipt_id=receipt_id, field=field) if sensitive else value
