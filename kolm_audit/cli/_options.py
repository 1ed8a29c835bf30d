"""Option handling shared by several commands (key stores and their key-encryption keys)."""

from __future__ import annotations

from pathlib import Path

from kolm_audit.errors import InputError
from kolm_audit.receipts.privacy import KeyEncryptionKey, KeyStore


def kek_from_options(*, kek_file: str | Path | None, kek_env: str | None) -> KeyEncryptionKey:
    """The key-encryption key a user names: exactly one of a file (``--kek-file``) or an env var (``--kek-env``)."""
    if (kek_file is None) == (kek_env is None):
        raise InputError("a key store needs exactly one key-encryption key source", field="--kek-file/--kek-env")
    return KeyEncryptionKey.from_file(kek_file) if kek_file is not None else KeyEncryptionKey.from_env(str(kek_env))


def open_keystore(keystore: str | Path | None, *, kek_file: str | Path | None, kek_env: str | None
                  ) -> tuple[KeyStore | None, KeyEncryptionKey | None]:
    """``--keystore`` with its KEK, or ``(None, None)`` when no key store is named (a KEK alone is refused)."""
    if keystore is None:
        if kek_file is not None or kek_env is not None:
            raise InputError("--kek-file/--kek-env need --keystore", field="--keystore")
        return None, None
    return KeyStore.load(keystore), kek_from_options(kek_file=kek_file, kek_env=kek_env)
